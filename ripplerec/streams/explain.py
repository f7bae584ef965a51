"""``ripplerec explain USER ITEM``: why ITEM is, or is not, recommended to USER.

Two sources, the first as far as it answers:

* the running stack: a recommendation request (``k`` items) over the topics says which version serves
  USER, and ITEM's rank and score if it is among the top ``k``;
* the model store: that version (else the latest head version announced on ``ripple.model-updates``) is
  loaded into a scorer built as the workers build theirs, on the catalog and USER's profile as Redis
  holds them, which gives ITEM's score and rank among every item USER has not consumed, and every past
  behaviour's influence on that score: its attention weight in the user vector and its leave-one-out
  delta (the score with it minus the score without it), as
  :meth:`~ripplerec.models.transformer_scorer.TransformerScorer.explain` computes them.

The catalog's embeddings come from the embedding cache under ``.ripplerec/cache`` (the workers' when run
from their folder); items it lacks are encoded here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ripplerec.config import Settings
from ripplerec.models.base import Influence

__all__ = ["Explanation", "explain_item", "announced_versions", "render"]

_COLD = "+cold-start"


@dataclass
class Explanation:
    """What ``ripplerec explain`` found; ``None`` where a source did not answer."""

    user_id: str
    item_id: str
    title: str | None = None
    known_item: bool = True
    # the running stack's reply
    served_version: str | None = None
    served_k: int = 0
    served_rank: int | None = None  # ITEM's place in the reply (None: not among its items)
    served_score: float | None = None
    # the head version loaded from the model store
    version: str | None = None
    examples_seen: int | None = None
    score: float | None = None
    rank: int | None = None  # among the items USER has not consumed (what the scorer ranks)
    candidates: int = 0
    consumed: bool = False
    history: int = 0  # past behaviours in the profile
    influences: list[Influence] = field(default_factory=list)
    titles: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def announced_versions(settings: Settings, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The head versions of ``settings.trainer.model_name`` on ``ripple.model-updates``, oldest first."""
    from kafka import KafkaConsumer, TopicPartition

    from ripplerec.schemas import AvroCodec

    codec = AvroCodec.from_settings(settings)
    topic = settings.topics.model_updates
    consumer = KafkaConsumer(**settings.kafka_client_kwargs(), enable_auto_commit=False,
                             api_version=settings.api_version_tuple, consumer_timeout_ms=500)
    updates: list[dict[str, Any]] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in partitions) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for message in records:
                    update = _decode_update(codec, message.value)
                    if update and update["model_name"] == settings.trainer.model_name and update["kind"] == "head":
                        updates.append(update)
    finally:
        consumer.close()
    return sorted(updates, key=lambda u: u["created_at"])


def _decode_update(codec: Any, value: bytes) -> dict[str, Any] | None:
    try:
        return dict(codec.decode("ModelUpdate", value))
    except Exception:  # the scorers refuse and count it; nothing to explain with
        return None


def _ask(settings: Settings, user_id: str, k: int, timeout_s: float, found: Explanation) -> None:
    """The running stack's answer, into ``found`` (a note when it does not answer)."""
    from ripplerec.consumers import RecommendationClient, RecommendationError, RecommendationTimeout

    try:
        with RecommendationClient(settings) as client:
            reply = client.request(user_id, k=k, timeout=timeout_s)
    except (RecommendationTimeout, RecommendationError) as exc:
        found.notes.append(f"the running stack did not answer ({exc}); explaining the latest announced version")
        return
    found.served_version = str(reply["model_version"])
    found.served_k = k
    for rank, item in enumerate(reply["items"], 1):
        if item["item_id"] == found.item_id:
            found.served_rank, found.served_score = rank, float(item["score"])


def explain_item(
    settings: Settings,
    user_id: str,
    item_id: str,
    *,
    ask: bool = True,
    k: int = 100,
    timeout_s: float = 10.0,
    pseudonym: bool = False,
    now: float | None = None,
) -> Explanation:
    """Why ``item_id`` is, or is not, recommended to ``user_id`` (see the module's docstring).

    ``pseudonym``: ``user_id`` already is the pseudonym the stores know (with
    ``RIPPLEREC_PSEUDONYMIZE_KEY`` set, a raw id is hashed first, as the clients do).
    """
    from ripplerec.streams.forgetting import stored_user_id

    found = Explanation(user_id, item_id)
    if ask:
        asking = settings.model_copy(update={"pseudonymize_key": None}) if pseudonym else settings
        _ask(asking, user_id, min(k, settings.limits.max_k), timeout_s, found)
    stored_id = stored_user_id(settings, user_id, pseudonym=pseudonym)
    catalog, signals = asyncio.run(_read_redis(settings, stored_id))
    found.known_item = item_id in catalog
    found.titles = {i: str(r.get("title") or "") for i, r in catalog.items()}
    found.title = found.titles.get(item_id)
    found.consumed = item_id in signals.consumed
    found.history = len(signals.history)
    if not found.known_item:
        found.notes.append(f"{item_id!r} is not in the catalog (publish it to {settings.topics.items})")
        return found

    served = found.served_version
    wanted = served[: -len(_COLD)] if served and served.endswith(_COLD) else served
    if wanted is not None and wanted.startswith("heuristic"):
        found.notes.append("the stack serves the heuristic: it has loaded no head version yet")
        wanted = None
    versions = announced_versions(settings)
    update = next((u for u in reversed(versions) if u["version"] == wanted), None) if wanted else None
    if update is None and wanted is not None:
        found.notes.append(f"version {wanted} is no longer announced; explaining the latest one")
    if update is None:
        update = versions[-1] if versions else None
    if update is None:
        found.notes.append("no head version has been announced yet: the heuristic serves every request")
        return found
    _explain_with(settings, update, catalog, signals, found, now if now is not None else time.time())
    return found


async def _read_redis(settings: Settings, user_id: str) -> tuple[dict[str, dict[str, Any]], Any]:
    from ripplerec.profiles.redis_store import RedisProfileStore

    store = RedisProfileStore.from_settings(settings)
    try:
        item_ids = await store.item_ids()
        catalog = await store.get_items(item_ids) if item_ids else {}
        signals = await store.scoring_signals(user_id, recent_items=0, popular=0, neighbours=0)
        return catalog, signals
    finally:
        await store.close()


def _explain_with(
    settings: Settings, update: Mapping[str, Any], catalog: Mapping[str, Mapping[str, Any]], signals: Any,
    found: Explanation, now: float,
) -> None:
    """Load ``update``'s head on the catalog and score the item for the user's profile, into ``found``."""
    import re

    import numpy as np

    from ripplerec.models.base import UserState
    from ripplerec.modelstore import open_model_store
    from ripplerec.streams.scoring import to_behaviors
    from ripplerec.streams.transformer_setup import build_transformer, to_item

    match = re.search(r"([0-9a-f]{64})$", str(update["location"]))
    if match is None:
        found.notes.append(f"version {update['version']}: its location names no sha256")
        return
    base = build_transformer(settings)
    base.add_items([to_item(catalog[i]) for i in sorted(catalog)])
    blob = open_model_store(settings).get(match.group(1))
    scorer = base.with_head(blob, source=f"model version {update['version']}")
    found.version = str(update["version"])
    found.examples_seen = int((update.get("metrics") or {}).get("examples_seen", scorer.trainer.examples))
    state = UserState(found.user_id, to_behaviors(signals.history))
    scores = scorer.score_all(state, now).astype(np.float64)
    index = scorer.item_index()
    row = index[found.item_id]
    found.score = float(scores[row])
    candidates = np.ones(len(scores), dtype=bool)
    for consumed in signals.consumed:
        if consumed in index:
            candidates[index[consumed]] = False
    found.candidates = int(candidates.sum())
    if not found.consumed:  # ties go to the lower row, as the scorer's top-k breaks them
        above = candidates & ((scores > found.score) | ((scores == found.score) & (np.arange(len(scores)) < row)))
        found.rank = int(above.sum()) + 1
    found.influences = scorer.explain(state, found.item_id, now)


def render(found: Explanation, *, limit: int = 10) -> Sequence[Any]:
    """Rich renderables for ``found``: a summary and a table of the influences."""
    from rich.markup import escape
    from rich.table import Table

    def name(item_id: str) -> str:
        title = found.titles.get(item_id)
        return f"{item_id} ({escape(title)})" if title else item_id

    out: list[Any] = [f"[bold]why {name(found.item_id)} for user {escape(found.user_id)}[/]"]
    out += [f"[yellow]{escape(note)}[/]" for note in found.notes]
    if found.served_version is not None:
        place = (f"rank {found.served_rank} of the top {found.served_k}, score {found.served_score:.4f}"
                 if found.served_rank is not None else f"not among the top {found.served_k}")
        out.append(f"the running stack serves {escape(found.served_version)}: {place}")
    if found.version is None:
        return out
    out.append(f"explained with head version {found.version} ({found.examples_seen or 0:,} examples seen), "
               f"on the user's {found.history} past behaviours:")
    if found.consumed:
        out.append(f"  score {found.score:.4f}; never recommended: the user already consumed it "
                   "(the scorer leaves consumed items out)")
    else:
        out.append(f"  score {found.score:.4f}, rank {found.rank:,} of the {found.candidates:,} items the user "
                   "has not consumed")
    if not found.influences:
        out.append("  no past behaviour influences it (no history on items the model knows)")
        return out
    table = Table(title="influencing past behaviours, most influential first")
    for column in ("#", "item", "action", "when", "attention", "leave-one-out delta"):
        table.add_column(column, justify="right" if column in ("#", "attention", "leave-one-out delta") else "left")
    for n, influence in enumerate(found.influences[:limit], 1):
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(influence.ts))
        table.add_row(str(n), name(influence.item_id), influence.action, when, f"{influence.weight:.3f}",
                      f"{influence.delta:+.4f}")
    out.append(table)
    if len(found.influences) > limit:
        out.append(f"  ... and {len(found.influences) - limit} more (--influences N shows more)")
    return out
