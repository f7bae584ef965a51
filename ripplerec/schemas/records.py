"""Python types of the records on every topic, one per ``.avsc`` (a test keeps them in step).

They are ``TypedDict``s because the codec reads and writes plain dicts: no conversion per message.
"""

from __future__ import annotations

from typing import Literal, TypedDict

__all__ = [
    "Action",
    "BehaviorEvent",
    "EventBatch",
    "Relation",
    "ItemUpsert",
    "RecommendationRequest",
    "InfluenceRecord",
    "RecommendedItem",
    "Recommendation",
    "HistoryEntry",
    "TrainingExample",
    "TrainingBatch",
    "UserHistory",
    "ModelUpdate",
    "DriftAlert",
    "DeadLetter",
    "RECORD_TYPES",
]

Action = Literal["view", "click", "cart", "purchase", "rate", "skip"]


class BehaviorEvent(TypedDict):
    event_id: str
    user_id: str
    item_id: str
    action: Action
    value: float | None
    ts: int
    context: dict[str, str]


class EventBatch(TypedDict):
    events: list[BehaviorEvent]


class Relation(TypedDict):
    relation: str
    target: str


class ItemUpsert(TypedDict):
    item_id: str
    title: str
    text: str
    attributes: dict[str, str]
    relations: list[Relation]
    image_vector: list[float] | None
    deleted: bool
    updated_at: int


class RecommendationRequest(TypedDict):
    request_id: str
    user_id: str
    k: int
    exclude: list[str]
    context: dict[str, str]
    requested_at: int


class InfluenceRecord(TypedDict):
    item_id: str
    action: str
    ts: int
    weight: float
    delta: float


class RecommendedItem(TypedDict):
    item_id: str
    score: float
    influences: list[InfluenceRecord]


class Recommendation(TypedDict):
    request_id: str | None
    trigger_event_id: str | None
    user_id: str
    items: list[RecommendedItem]
    model_version: str
    produced_at: int
    error: str | None


class HistoryEntry(TypedDict):
    item_id: str
    action: str
    value: float | None
    ts: int


class TrainingExample(TypedDict):
    event_id: str
    user_id: str
    positive_item_id: str
    action: str
    value: float | None
    ts: int
    history: list[HistoryEntry]
    negatives: list[str]
    weight: float


class UserHistory(TypedDict):
    user_id: str
    history: list[HistoryEntry]


class TrainingBatch(TypedDict):
    events: list[BehaviorEvent]
    histories: list[UserHistory]
    candidates: list[str]
    negatives: int
    history_length: int


class ModelUpdate(TypedDict):
    model_name: str
    version: str
    kind: Literal["head", "snapshot"]
    location: str
    parent: str | None
    metrics: dict[str, float]
    created_at: int
    sha256: str | None
    examples_seen: int | None


class DriftAlert(TypedDict):
    metric: str
    detector: str
    value: float
    window: dict[str, float]
    ts: int
    message: str
    events_seen: int | None
    event_ts: int | None
    model_version: str | None


class DeadLetter(TypedDict):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    error_type: str
    error: str
    agent: str
    ts: int
    raw_size: int | None
    raw_sha256: str | None
    key_size: int | None


#: Record name (as in ``SCHEMA_FILES``) -> its Python type.
RECORD_TYPES: dict[str, type] = {
    "BehaviorEvent": BehaviorEvent,
    "EventBatch": EventBatch,
    "ItemUpsert": ItemUpsert,
    "RecommendationRequest": RecommendationRequest,
    "Recommendation": Recommendation,
    "TrainingExample": TrainingExample,
    "TrainingBatch": TrainingBatch,
    "ModelUpdate": ModelUpdate,
    "DriftAlert": DriftAlert,
    "DeadLetter": DeadLetter,
}
