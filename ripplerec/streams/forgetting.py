"""``ripplerec forget USER``: remove every trace of a user from what the workers keep.

Every store that keeps something per user is a :class:`Forgetter` (an async ``forget_user(user_id)``
returning how many records it deleted, and ``close()``), listed in :data:`FORGETTERS` as an import
path of a factory taking the :class:`~ripplerec.config.Settings`. :func:`forget_user` builds each,
calls it and closes it. Today that is the Redis profile store (profile hash with history, counts,
dedupe digests and training histories; consumed set; rate limit: see
:meth:`ripplerec.profiles.redis_store.RedisProfileStore.forget_user`). A store added later (the
replay buffer, cached user vectors) adds its line to :data:`FORGETTERS`, or calls
:func:`register_forgetter` at import, and ``forget`` reaches it with no other change.

Kafka: a record can only be removed from a *compacted* topic, by a tombstone (a null value) under
its key. :func:`forget_user` publishes one under the user id to every compacted topic keyed by
user id (:func:`user_keyed_compacted_topics`). With the default topics there is none:
``ripple.items`` is keyed by item id and ``ripple.model-updates`` by model name, both compacted;
the user-keyed topics (``ripple.events``, ``ripple.rec-requests``, ``ripple.recommendations``,
``ripple.training``) are deleted by retention, so the user's past records stay there until it
removes them. With pseudonymisation on, those records only carry the user's pseudonym.

The user id is the id as stored: with ``RIPPLEREC_PSEUDONYMIZE_KEY`` set, :func:`stored_user_id`
turns the raw id into its pseudonym (``pseudonym=True`` takes it as already one).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ripplerec.config import Settings, TopicNames
from ripplerec.producers.pseudonyms import Pseudonymizer, looks_pseudonymous

__all__ = [
    "Forgetter",
    "ForgetterFactory",
    "FORGETTERS",
    "ForgetReport",
    "register_forgetter",
    "forgetter_factories",
    "stored_user_id",
    "user_keyed_compacted_topics",
    "forget_user",
]


class Forgetter(Protocol):
    """A store that keeps something per user and can delete it."""

    async def forget_user(self, user_id: str) -> int:
        """Delete everything kept about ``user_id``; how many records (keys, rows, entries) existed."""
        ...

    async def close(self) -> None: ...


ForgetterFactory = Callable[[Settings], Forgetter]

#: Every store that keeps data per user: name -> ``"module:factory"`` (``factory(settings)`` returns a
#: :class:`Forgetter`), imported only when ``forget`` runs. A new per-user store adds its line here.
FORGETTERS: dict[str, str | ForgetterFactory] = {
    "redis profiles": "ripplerec.profiles.redis_store:RedisProfileStore.from_settings",
    # the trainer's replay buffer and count windows, in its memory and checkpoint: a request it applies
    "trainer (request queued)": "ripplerec.streams.forget_requests:ForgetRequests.from_settings",
}


def register_forgetter(name: str, factory: str | ForgetterFactory) -> None:
    """Add (or replace) a store ``forget`` must reach: a factory or its ``"module:attribute"`` path."""
    FORGETTERS[name] = factory


def _resolve(factory: str | ForgetterFactory) -> ForgetterFactory:
    if not isinstance(factory, str):
        return factory
    module_name, _, path = factory.partition(":")
    target: Any = importlib.import_module(module_name)
    for attribute in path.split("."):
        target = getattr(target, attribute)
    return target  # type: ignore[no-any-return]


def forgetter_factories() -> dict[str, ForgetterFactory]:
    """Every registered store's factory, imported."""
    return {name: _resolve(factory) for name, factory in FORGETTERS.items()}


def stored_user_id(settings: Settings, user_id: str, *, pseudonym: bool = False) -> str:
    """The id the stores know ``user_id`` by: its pseudonym when the clients pseudonymise.

    ``pseudonym=True``: ``user_id`` already is one (what ``RecommendationConsumer`` yields).
    """
    if pseudonym:
        return user_id
    pseudonymize = Pseudonymizer.from_settings(settings)
    return user_id if pseudonymize is None else pseudonymize(user_id)


def user_keyed_compacted_topics(topics: TopicNames) -> list[str]:
    """The compacted topics whose records are keyed by user id (where a tombstone erases a user)."""
    user_keyed = {topics.events, topics.rec_requests, topics.recommendations, topics.training}
    return sorted(topics.compacted() & user_keyed)


@dataclass
class ForgetReport:
    """What :func:`forget_user` did: records deleted per store, topics given a tombstone."""

    user_id: str
    deleted: dict[str, int] = field(default_factory=dict)
    tombstones: list[str] = field(default_factory=list)
    #: The raw id given looks like a pseudonym: hashed again, so probably the wrong id.
    looked_pseudonymous: bool = False

    def lines(self, topics: TopicNames) -> list[str]:
        """The report as ``ripplerec forget`` prints it."""
        out = [f"forgot {self.user_id}"]
        if self.looked_pseudonymous:
            out.append("  warning: the id given looks like a pseudonym; pass --pseudonym if it is one")
        out += [f"  {name}: {count} record(s) deleted" for name, count in self.deleted.items()]
        if self.tombstones:
            out.append(f"  tombstones published to {', '.join(self.tombstones)}")
        else:
            compacted = ", ".join(sorted(topics.compacted())) or "none"
            out.append(
                f"  no tombstones: no compacted topic is keyed by user id (compacted: {compacted}, keyed by "
                "item id or model name); the user's records on the other topics stay until retention removes them"
            )
        return out


def forget_user(settings: Settings, user_id: str, *, pseudonym: bool = False) -> ForgetReport:
    """Delete ``user_id`` from every registered store and tombstone it on user-keyed compacted topics.

    ``user_id`` is the raw id (pseudonymised with the settings' key when one is set) or, with
    ``pseudonym=True``, the id as stored. Raises whatever a store or the broker raised; running it
    again is harmless.
    """
    stored = stored_user_id(settings, user_id, pseudonym=pseudonym)
    report = ForgetReport(
        stored, looked_pseudonymous=stored != user_id and looks_pseudonymous(user_id)
    )
    factories = forgetter_factories()

    async def run() -> None:
        for name, factory in factories.items():
            store = factory(settings)
            try:
                report.deleted[name] = await store.forget_user(stored)
            finally:
                await store.close()

    asyncio.run(run())
    topics = user_keyed_compacted_topics(settings.topics)
    if topics:
        _publish_tombstones(settings, topics, stored)
        report.tombstones = topics
    return report


def _publish_tombstones(settings: Settings, topics: list[str], user_id: str) -> None:
    from kafka import KafkaProducer

    from ripplerec.producers.event_producer import DEFAULT_PRODUCER_KWARGS

    producer = KafkaProducer(
        **settings.kafka_client_kwargs(),
        api_version=settings.api_version_tuple,
        client_id="ripplerec-forget",
        acks="all",
        enable_idempotence=DEFAULT_PRODUCER_KWARGS["enable_idempotence"],
    )
    try:
        futures = [producer.send(topic, key=user_id.encode("utf-8"), value=None) for topic in topics]
        producer.flush()
        for future in futures:
            future.get(timeout=30)  # raises what the broker answered
    finally:
        producer.close()
