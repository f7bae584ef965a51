"""What the scorer agent does with a recommendation request, apart from the Faust plumbing.

A :class:`ScoringBackend` turns (user, k, exclude) into scored items. Two ship here:

* :class:`HeuristicBackend` reads the user's history, consumed items, popular items and the
  co-occurrence rows of recent items in one Redis round trip and ranks with the pure
  :func:`ripplerec.models.heuristic.rank`;
* :class:`ModelBackend` wraps any :class:`~ripplerec.models.base.Scorer` (the transformer scorer
  plugs in here): it reads the profile, builds a ``UserState`` and calls ``recommend``.

``settings.scorer`` (``RIPPLEREC_SCORER``) picks one; :func:`make_backend` builds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ripplerec.config import Settings
from ripplerec.models.base import Behavior, Item, ScoredItem, Scorer, UserState
from ripplerec.models.heuristic import HeuristicConfig, HeuristicScorer, rank
from ripplerec.monitoring import StreamMetrics
from ripplerec.profiles import ProfileEntry, ProfileStore
from ripplerec.schemas import AvroCodec
from ripplerec.schemas.records import Recommendation, RecommendedItem
from ripplerec.streams.ingest import TRIGGER_CONTEXT_KEY, DeadLetterSink, RawMessage, Send
from ripplerec.streams.validation import InvalidRecord, validate_request

__all__ = ["ScoringBackend", "HeuristicBackend", "ModelBackend", "RequestProcessor", "make_backend", "COLD_START"]

log = logging.getLogger(__name__)

#: Appended to ``model_version`` when the user has no history and the items are just popular ones.
COLD_START = "+cold-start"


def to_behaviors(entries: Sequence[ProfileEntry]) -> tuple[Behavior, ...]:
    """Profile entries (ts in ms) as model behaviours (ts in seconds, as the datasets use)."""
    return tuple(Behavior(e.item_id, e.action, e.value, e.ts / 1000.0) for e in entries)


#: (user id, k, exclude) of one request.
Ask = tuple[str, int, Sequence[str]]


class ScoringBackend(Protocol):
    @property
    def version(self) -> str: ...

    async def recommend(
        self, user_id: str, k: int, exclude: Sequence[str], now: float
    ) -> tuple[list[ScoredItem], bool]:
        """(items best first, whether the user was unknown so the items are cold-start ones)."""
        ...

    async def recommend_many(self, asks: Sequence[Ask], now: float) -> list[tuple[list[ScoredItem], bool]]:
        """:meth:`recommend` for many requests at once (one store round trip where possible)."""
        ...

    def add_items(self, items: Sequence[Mapping[str, Any]]) -> None: ...


class HeuristicBackend:
    """The heuristic scorer on the store's signals.

    Popular items are global, so they are read at most once per ``popular_refresh_s`` (the
    ``popular_cache`` best ones) instead of with every request; the per-user part (history,
    consumed items, co-occurrence rows of recent items) is one round trip per request.
    """

    def __init__(
        self,
        store: ProfileStore,
        config: HeuristicConfig | None = None,
        *,
        popular_cache: int = 2_000,
        popular_refresh_s: float = 1.0,
    ) -> None:
        self.store = store
        self.config = config or HeuristicConfig()
        self.version = HeuristicScorer(self.config).version
        self.popular_cache = popular_cache
        self.popular_refresh_s = popular_refresh_s
        self._popular: list[tuple[str, float]] = []
        self._popular_at = float("-inf")
        self._refreshing: asyncio.Future[None] | None = None

    async def _top_popular(self) -> list[tuple[str, float]]:
        if time.monotonic() - self._popular_at >= self.popular_refresh_s:
            if self._refreshing is None:  # one refresh at a time, whatever the concurrency
                self._refreshing = asyncio.ensure_future(self._refresh())
            refreshing = self._refreshing
            if not self._popular:
                await refreshing
        return self._popular

    async def _refresh(self) -> None:
        try:
            self._popular = await self.store.popular(self.popular_cache)
            self._popular_at = time.monotonic()
        finally:
            self._refreshing = None

    async def recommend(
        self, user_id: str, k: int, exclude: Sequence[str], now: float
    ) -> tuple[list[ScoredItem], bool]:
        return (await self.recommend_many([(user_id, k, exclude)], now))[0]

    async def recommend_many(self, asks: Sequence[Ask], now: float) -> list[tuple[list[ScoredItem], bool]]:
        c = self.config
        all_signals = await self.store.scoring_signals_many(
            [user_id for user_id, _, _ in asks], recent_items=c.recent_items, popular=0, neighbours=c.neighbours
        )
        top = await self._top_popular()
        out = []
        for (_, k, exclude), signals in zip(asks, all_signals, strict=True):
            excluded = set(signals.consumed)
            excluded.update(exclude)
            # the best item stays in (it sets the popularity scale) even when excluded; rank skips it
            popular: dict[str, float] = dict(top[:1])
            wanted = c.popular_candidates + k
            for item_id, score in top:
                if item_id not in excluded:
                    popular[item_id] = score
                    if len(popular) > wanted:
                        break
            items = rank(to_behaviors(signals.history), popular, signals.cooccurrence, k, excluded, c)
            out.append((items, not signals.history))
        return out

    def add_items(self, items: Sequence[Mapping[str, Any]]) -> None:
        """The heuristic needs no catalog: candidates come from popularity and co-occurrence."""


class ModelBackend:
    """Any :class:`Scorer` fed the profile history; consumed items are excluded here."""

    def __init__(self, store: ProfileStore, scorer: Scorer) -> None:
        self.store = store
        self.scorer = scorer

    @property
    def version(self) -> str:
        return self.scorer.version

    async def recommend(
        self, user_id: str, k: int, exclude: Sequence[str], now: float
    ) -> tuple[list[ScoredItem], bool]:
        signals = await self.store.scoring_signals(user_id, recent_items=0, popular=0, neighbours=0)
        state = UserState(user_id, to_behaviors(signals.history))
        excluded = set(signals.consumed)
        excluded.update(exclude)
        return self.scorer.recommend(state, k, excluded, now), not signals.history

    async def recommend_many(self, asks: Sequence[Ask], now: float) -> list[tuple[list[ScoredItem], bool]]:
        return [await self.recommend(user_id, k, exclude, now) for user_id, k, exclude in asks]

    def add_items(self, items: Sequence[Mapping[str, Any]]) -> None:
        self.scorer.add_items([
            Item(
                i["item_id"], i.get("title", ""), i.get("text", ""), dict(i.get("attributes") or {}),
                tuple((r[0], r[1]) if isinstance(r, list | tuple) else (r["relation"], r["target"])
                      for r in i.get("relations") or ()),
            )
            for i in items if not i.get("deleted")
        ])


def make_backend(settings: Settings, store: ProfileStore) -> ScoringBackend:
    """The backend ``settings.scorer`` names."""
    if settings.scorer == "heuristic":
        return HeuristicBackend(
            store,
            HeuristicConfig(
                half_life_s=settings.popularity_half_life_s, cooccurrence_window=settings.cooccurrence_window
            ),
        )
    if settings.scorer == "transformer":
        try:
            from ripplerec.models import TransformerScorer
            from ripplerec.models.encoder import EncoderConfig, TransformerEncoder
        except ImportError as exc:
            raise RuntimeError(f"RIPPLEREC_SCORER=transformer needs the models package: {exc}") from exc
        if hasattr(TransformerScorer, "from_settings"):
            return ModelBackend(store, TransformerScorer.from_settings(settings))
        # Fresh head on the configured encoder; loading snapshots and head updates is the learning
        # issue's part (ModelUpdate on ripple.model-updates).
        from ripplerec.evaluation.zoo import ZooConfig, scorer_configs
        from ripplerec.models.embedding_cache import EmbeddingCache

        model = str(settings.model_path) if settings.model_path is not None else settings.model_name
        encoder = TransformerEncoder(EncoderConfig(model=model, device=settings.device))
        zoo = ZooConfig(encoder=model)
        config, _ = scorer_configs(zoo)  # the configuration `ripplerec eval` measures
        return ModelBackend(store, TransformerScorer(config, encoder, EmbeddingCache(zoo.cache_dir)))
    raise ValueError(f"unknown scorer {settings.scorer!r}")


def to_record_items(items: Sequence[ScoredItem]) -> list[RecommendedItem]:
    return [
        {
            "item_id": s.item_id,
            "score": float(s.score),
            "influences": [
                {"item_id": i.item_id, "action": i.action, "ts": int(round(i.ts * 1000)),
                 "weight": float(i.weight), "delta": float(i.delta)}
                for i in s.influences
            ],
        }
        for s in items
    ]


class RequestProcessor:
    """Decode a request, score it, publish the Recommendation (or a dead letter)."""

    def __init__(
        self, settings: Settings, codec: AvroCodec, backend: ScoringBackend, send: Send, metrics: StreamMetrics
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.backend = backend
        self.send = send
        self.metrics = metrics
        self.dead_letters = DeadLetterSink(settings, codec, send, metrics, "scorer")

    async def process(self, message: RawMessage) -> Recommendation | None:
        return (await self.process_many([message]))[0]

    async def process_many(self, messages: Sequence[RawMessage]) -> list[Recommendation | None]:
        """Answer a batch of requests: decode, one store round trip, rank each, publish each reply."""
        started = time.perf_counter()
        requests: list[dict[str, Any] | None] = []
        for message in messages:
            try:
                request = self.codec.decode("RecommendationRequest", message.value)
                validate_request(request, self.settings.limits)
            except InvalidRecord as exc:
                await self.dead_letters.publish(message, exc.error_type, str(exc))
                request = None
            except Exception as exc:
                await self.dead_letters.publish(message, type(exc).__name__, str(exc))
                request = None
            requests.append(request)
        valid = [r for r in requests if r is not None]
        now = time.time()
        error = None
        try:
            results = await self.backend.recommend_many([(r["user_id"], r["k"], r["exclude"]) for r in valid], now)
        except Exception as exc:  # answer with the error rather than let the clients time out
            log.exception("scoring failed for %d requests", len(valid))
            self.metrics.scoring_errors.inc(len(valid))
            results = [([], False)] * len(valid)
            error = f"{type(exc).__name__}: {exc}"
        records: dict[int, Recommendation] = {}
        topic = self.settings.topics.recommendations
        produced_at = int(time.time() * 1000)  # after scoring: when the replies leave
        for request, (items, cold) in zip(valid, results, strict=True):
            trigger = (request.get("context") or {}).get(TRIGGER_CONTEXT_KEY)
            record: Recommendation = {
                "request_id": None if trigger else request["request_id"],
                "trigger_event_id": trigger,
                "user_id": request["user_id"],
                "items": to_record_items(items),
                "model_version": self.backend.version + (COLD_START if cold and error is None else ""),
                "produced_at": produced_at,
                "error": error,
            }
            # not awaiting delivery: the reply is on its way, waiting for the broker's ack adds latency
            await self.send(topic, request["user_id"].encode(), self.codec.encode("Recommendation", record))
            self.metrics.recommendations.labels("proactive" if trigger else "request").inc()
            records[id(request)] = record
        elapsed = time.perf_counter() - started
        for _ in valid:
            self.metrics.request_seconds.observe(elapsed)
        return [records.get(id(r)) if r is not None else None for r in requests]
