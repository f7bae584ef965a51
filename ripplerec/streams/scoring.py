"""What the scorer agent does with a recommendation request, apart from the Faust plumbing.

A :class:`ScoringBackend` turns (user, k, exclude) into scored items. Two ship here:

* :class:`HeuristicBackend` reads the user's history, consumed items, popular items and the
  co-occurrence rows of recent items in one Redis round trip and ranks with the pure
  :func:`ripplerec.models.heuristic.rank`;
* :class:`ModelBackend` wraps any :class:`~ripplerec.models.base.Scorer`: it reads the profile,
  builds a ``UserState`` and calls ``recommend``;
* :class:`VersionedModelBackend` is the served transformer: a :class:`ModelBackend` whose model is
  swapped, between requests, for each head version the trainer announces on
  ``ripple.model-updates`` (:meth:`~VersionedModelBackend.follow`), with the heuristic answering
  until the first version is loaded.

``settings.scorer`` (``RIPPLEREC_SCORER``) picks one; :func:`make_backend` builds it.

Following versions: each announced version is read from the model store, its sha256 verified, and
loaded into a new scorer in a thread (:meth:`TransformerScorer.with_head
<ripplerec.models.transformer_scorer.TransformerScorer.with_head>` checks format, config, encoder,
shapes and values), then swapped in on the event loop in one assignment: a request is scored by one
model from start to end, and its ``Recommendation`` carries that model's version. A version that does
not load is refused with a log line and ``ripplerec_model_versions_refused_total{reason}``, and the
scorer keeps serving the one it had.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ripplerec.config import Settings
from ripplerec.models.base import Behavior, Item, ScoredItem, Scorer, UserState
from ripplerec.models.heuristic import HeuristicConfig, HeuristicScorer, rank
from ripplerec.monitoring import StreamMetrics
from ripplerec.profiles import ProfileEntry, ProfileStore
from ripplerec.schemas import AvroCodec
from ripplerec.schemas.records import Recommendation, RecommendedItem
from ripplerec.streams.disclosure import disclose
from ripplerec.streams.ingest import TRIGGER_CONTEXT_KEY, DeadLetterSink, RawMessage, Send
from ripplerec.streams.validation import InvalidRecord, validate_request

if TYPE_CHECKING:
    from ripplerec.models.transformer_scorer import TransformerScorer

__all__ = ["ScoringBackend", "HeuristicBackend", "ModelBackend", "VersionedModelBackend", "RequestProcessor",
           "make_backend", "register_version_follower", "COLD_START", "CLOCK_CONTEXT_KEY", "request_clock"]

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


class RetiredItems:
    """Items deleted from the catalog: never recommended, by any backend.

    A model keeps a deleted item's row (its versions' shapes stay as the trainer made them), and the
    popularity and co-occurrence counts keep its history, so the backends exclude these ids instead.
    They are read from the store (``deleted_item_ids``) at most every ``refresh_s``, so a deletion
    reaches every scorer process within that; deletions the catalog agent of this process applies
    (:meth:`apply`) count at once.
    """

    def __init__(self, store: ProfileStore, refresh_s: float = 2.0) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.ids: frozenset[str] = frozenset()
        self._read_at = float("-inf")
        self._reading: asyncio.Future[None] | None = None

    async def current(self) -> frozenset[str]:
        if time.monotonic() - self._read_at >= self.refresh_s:
            if self._reading is None:  # one read at a time, whatever the concurrency
                self._reading = asyncio.ensure_future(self._read())
            await self._reading
        return self.ids

    async def _read(self) -> None:
        try:
            read = getattr(self.store, "deleted_item_ids", None)
            if read is not None:
                self.ids = frozenset(await read())
            self._read_at = time.monotonic()
        finally:
            self._reading = None

    def apply(self, items: Sequence[Mapping[str, Any]]) -> None:
        ids = set(self.ids)
        for item in items:
            (ids.add if item.get("deleted") else ids.discard)(item["item_id"])
        self.ids = frozenset(ids)


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
        self.retired = RetiredItems(store)

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
        retired = await self.retired.current()
        out = []
        for (_, k, exclude), signals in zip(asks, all_signals, strict=True):
            excluded = set(signals.consumed)
            excluded.update(exclude)
            excluded.update(retired)
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
        """The heuristic needs no catalog (candidates come from popularity and co-occurrence), only to
        know which items were deleted."""
        self.retired.apply(items)


class ModelBackend:
    """Any :class:`Scorer` fed the profile history; consumed items are excluded here."""

    def __init__(self, store: ProfileStore, scorer: Scorer) -> None:
        self.store = store
        self.scorer = scorer
        self.retired = RetiredItems(store)

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
        excluded.update(await self.retired.current())
        return self.scorer.recommend(state, k, excluded, now), not signals.history

    async def recommend_many(self, asks: Sequence[Ask], now: float) -> list[tuple[list[ScoredItem], bool]]:
        return [await self.recommend(user_id, k, exclude, now) for user_id, k, exclude in asks]

    def add_items(self, items: Sequence[Mapping[str, Any]]) -> None:
        self.retired.apply(items)
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
            from ripplerec.streams.transformer_setup import build_transformer
        except ImportError as exc:
            raise RuntimeError(f"RIPPLEREC_SCORER=transformer needs the models package: {exc}") from exc
        # the configuration `ripplerec eval` measures; the heuristic answers until a head version is loaded
        fallback = HeuristicBackend(
            store,
            HeuristicConfig(
                half_life_s=settings.popularity_half_life_s, cooccurrence_window=settings.cooccurrence_window
            ),
        )
        # built in the model thread once the worker runs: torch and the encoder's weights take seconds
        # that would otherwise delay the worker's group join (and its first event after a restart)
        return VersionedModelBackend(store, lambda: build_transformer(settings), fallback=fallback)
    raise ValueError(f"unknown scorer {settings.scorer!r}")


#: A model store digest at the end of a ``ModelUpdate``'s ``location`` (``redis:...:blob:<sha256>``, a file URI).
_DIGEST_AT_END = re.compile(r"([0-9a-f]{64})$")


class VersionedModelBackend(ModelBackend):
    """The transformer scorer, swapped for each head version the trainer announces.

    Until a version is loaded, ``fallback`` (the heuristic) answers and names the version. Catalog
    items (from the catalog agent through :meth:`add_items`, and from the profile store's catalog)
    are encoded in a thread and added between requests.

    ``scorer`` may be a function that builds it: with a ``fallback`` it is then called in the model
    thread when :meth:`follow` starts (:meth:`ready`), not on the event loop while the worker starts.
    """

    def __init__(
        self, store: ProfileStore, scorer: TransformerScorer | Callable[[], TransformerScorer], *,
        fallback: ScoringBackend | None = None,
    ) -> None:
        build = scorer if callable(scorer) else None  # a scorer itself is not callable
        if build is not None and fallback is None:  # nothing could answer meanwhile: build it now
            scorer, build = build(), None
        super().__init__(store, scorer)  # type: ignore[arg-type]  # a builder until ready() replaced it
        self._build_scorer = build
        self.scorer: TransformerScorer = scorer  # type: ignore[assignment]
        self.fallback = fallback
        self.loaded: str | None = None  # the version being served (None: none loaded yet)
        self.refused: dict[str, str] = {}  # version -> why it was refused (the latest few)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ripple-model")
        self._pending_items: list[Item] = []
        self._items_arrived = asyncio.Event()
        self._catalog_ready = asyncio.Event()
        self._model_store: Any = None
        self._codec: AvroCodec | None = None

    @property
    def version(self) -> str:
        if self.loaded is None and self.fallback is not None:
            return self.fallback.version
        return self.scorer.version

    async def ready(self) -> TransformerScorer:
        """The scorer, built in the model thread first if it was given as a builder."""
        if self._build_scorer is not None:
            build, self._build_scorer = self._build_scorer, None
            self.scorer = await asyncio.get_running_loop().run_in_executor(self._executor, build)
        return self.scorer

    async def recommend_many(self, asks: Sequence[Ask], now: float) -> list[tuple[list[ScoredItem], bool]]:
        # one model for the whole call, whatever is swapped in meanwhile (the caller read its version before)
        if self.loaded is None and self.fallback is not None:
            return await self.fallback.recommend_many(asks, now)
        scorer = self.scorer
        all_signals = await self.store.scoring_signals_many(
            [user_id for user_id, _, _ in asks], recent_items=0, popular=0, neighbours=0
        )
        retired = await self.retired.current()
        out = []
        for (user_id, k, exclude), signals in zip(asks, all_signals, strict=True):
            excluded = set(signals.consumed)
            excluded.update(exclude)
            excluded.update(retired)
            state = UserState(user_id, to_behaviors(signals.history))
            out.append((scorer.recommend(state, k, excluded, now), not signals.history))
        return out

    async def recommend(
        self, user_id: str, k: int, exclude: Sequence[str], now: float
    ) -> tuple[list[ScoredItem], bool]:
        return (await self.recommend_many([(user_id, k, exclude)], now))[0]

    def add_items(self, items: Sequence[Mapping[str, Any]]) -> None:
        """Queue catalog items for encoding in the model thread (:meth:`follow` adds them)."""
        from ripplerec.streams.transformer_setup import to_item

        self.retired.apply(items)
        if self.fallback is not None:
            self.fallback.add_items(items)
        self._pending_items.extend(to_item(i) for i in items if not i.get("deleted"))
        self._items_arrived.set()

    # -- following the catalog and the versions -----------------------------------------------------
    async def follow(self, settings: Settings, metrics: StreamMetrics, codec: AvroCodec) -> None:
        """Keep the catalog and the served version current until cancelled."""
        from ripplerec.modelstore import open_model_store

        self._codec = codec
        await self.ready()
        model_store = open_model_store(settings)
        catalog = asyncio.ensure_future(self._follow_catalog(settings.trainer.catalog_refresh_s))
        versions = asyncio.ensure_future(self._follow_versions(settings, metrics, model_store))
        try:
            done, _ = await asyncio.wait({catalog, versions}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            catalog.cancel()
            versions.cancel()

    async def _follow_catalog(self, every_s: float) -> None:
        while True:
            await self.sync_catalog()
            self._catalog_ready.set()
            try:
                await asyncio.wait_for(self._items_arrived.wait(), every_s)
            except asyncio.TimeoutError:
                pass

    async def sync_catalog(self) -> int:
        """Add the items queued by :meth:`add_items` and the profile store's items the model lacks; how many."""
        self._items_arrived.clear()
        items, self._pending_items = self._pending_items, []
        known = set(self.scorer.item_ids)
        queued = {item.item_id for item in items}
        item_ids = getattr(self.store, "item_ids", None)
        if item_ids is not None:
            missing = [i for i in await item_ids() if i not in known and i not in queued]
            if missing:
                from ripplerec.streams.transformer_setup import to_item

                found = await self.store.get_items(missing)
                items.extend(to_item(found[i]) for i in missing if i in found)
        fresh = list({item.item_id: item for item in items if item.item_id not in known}.values())
        if not fresh:
            return 0
        embeddings = await asyncio.get_running_loop().run_in_executor(self._executor, self._encode, fresh)
        self.scorer.add_items(fresh, embeddings)  # the scorer serving now (a swap carries its items over)
        return len(fresh)

    def _encode(self, items: Sequence[Item]) -> Any:
        from ripplerec.models.transformer_scorer import item_text

        scorer = self.scorer
        if not scorer.config.head.uses_text or scorer.encoder is None:
            return None
        return scorer.cache.encode(scorer.encoder, [item_text(item) for item in items])

    async def _follow_versions(self, settings: Settings, metrics: StreamMetrics, model_store: Any) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        topic = settings.topics.model_updates
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers.split(","), enable_auto_commit=False,
            auto_offset_reset="earliest", **settings.kafka.aiokafka_kwargs(),
        )
        codec = self._codec or AvroCodec()
        await consumer.start()
        try:
            await consumer.topics()  # metadata, for the partitions
            partitions = sorted(consumer.partitions_for_topic(topic) or {0})
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            await self._catalog_ready.wait()  # a version's rows go to the items the model knows
            latest: dict[str, Any] | None = None
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for message in records:
                        try:
                            update = dict(codec.decode("ModelUpdate", message.value))
                        except Exception as exc:
                            log.error("model update at %s[%d]@%d does not decode (%s); skipped", topic,
                                      message.partition, message.offset, exc)
                            metrics.model_versions_refused.labels("undecodable").inc()
                            continue
                        if update["model_name"] == settings.trainer.model_name and update["kind"] == "head":
                            if latest is None or update["created_at"] >= latest["created_at"]:
                                latest = update
                if latest is None or await _behind(consumer, tps):
                    continue  # a backlog (a start, a slow load) is read to its end: only its newest version loads
                if latest["version"] != self.loaded and latest["version"] not in self.refused:
                    await self.load(latest, model_store, metrics)
                latest = None
        finally:
            await consumer.stop()

    async def load(self, update: Mapping[str, Any], model_store: Any, metrics: StreamMetrics) -> bool:
        """Load an announced version in the model thread and swap it in; False (and the old one kept
        serving) when it is refused."""
        from ripplerec.models.base import ModelLoadError
        from ripplerec.models.store import BlobNotFoundError, CorruptBlobError

        version = str(update["version"])
        self._model_store = model_store
        match = _DIGEST_AT_END.search(str(update["location"]))
        digest = update.get("sha256") or (match.group(1) if match is not None else None)
        loop = asyncio.get_running_loop()
        try:
            if digest is None:
                raise ValueError(f"version {version} names no sha256 (neither the field nor its location)")
            new = await loop.run_in_executor(self._executor, self._build, str(digest), version)
        except Exception as exc:
            reasons = {BlobNotFoundError: "missing", CorruptBlobError: "hash", ModelLoadError: "format",
                       ValueError: "location"}
            reason = next((name for kind, name in reasons.items() if isinstance(exc, kind)), "error")
            self.refused[version] = f"{reason}: {exc}"
            while len(self.refused) > 100:
                self.refused.pop(next(iter(self.refused)))
            metrics.model_versions_refused.labels(reason).inc()
            log.error("refused model version %s (%s): %s; still serving %s", version, reason, exc, self.version)
            return False
        self._swap(new, version)
        metrics.model_versions_loaded.inc()
        seen = update.get("examples_seen")
        if seen is None:
            seen = (update.get("metrics") or {}).get("examples_seen", new.trainer.examples)
        metrics.model_version_examples.set(seen)
        log.info("serving model version %s (%d examples seen)", version, int(seen))
        return True

    def _build(self, digest: str, version: str) -> TransformerScorer:
        """In the model thread: the verified blob, loaded into a new scorer on the current catalog."""
        from ripplerec.models.base import ModelLoadError

        blob: bytes = self._model_store.get(digest)  # verified: raises when it does not hash to the digest
        new = self.scorer.with_head(blob, source=f"model version {version}")
        if new.version_name != version:
            raise ModelLoadError(f"announced as {version!r}, but the stored blob is {new.version_name!r}")
        return new

    def _swap(self, new: TransformerScorer, version: str) -> None:
        """Serve ``new`` from the next request on (event loop: no request is in the middle of scoring)."""
        old = self.scorer
        missing = [item_id for item_id in old.item_ids if item_id not in set(new.item_ids)]
        if missing:  # items added to the old model while the new one loaded: carried over with their text
            rows = [old.item_ids.index(item_id) for item_id in missing]
            embeddings = old.head.item_text[rows].numpy().copy() if old.config.head.uses_text else None
            new.add_items([Item(item_id, item_id) for item_id in missing], embeddings)
        self.scorer = new
        self.loaded = version


def register_version_follower(app: Any, runtime: Any, settings: Settings) -> None:
    """A worker task that keeps the served transformer's catalog and version current (crash-only)."""

    @app.task
    async def follow_versions() -> None:
        processor = await runtime.requests()
        backend = processor.backend
        if not isinstance(backend, VersionedModelBackend):
            return

        async def body() -> None:
            await backend.follow(settings, runtime.metrics, runtime.codec)

        await runtime.supervise("versions", body)


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


#: Context key of a RecommendationRequest that sets the clock it is scored at (epoch milliseconds),
#: for replays of old events (``ripplerec eval --through-stream``): a model's recency features then
#: measure ages from the replayed event's time, not from today. Without it: the scorer's wall clock.
CLOCK_CONTEXT_KEY = "ripple.clock_ms"


def request_clock(request: Mapping[str, Any], now: float) -> float:
    """The clock (seconds) to score ``request`` at: its ``CLOCK_CONTEXT_KEY``, else ``now``.

    >>> request_clock({"context": {CLOCK_CONTEXT_KEY: "874724710000"}}, 1.0), request_clock({"context": {}}, 1.0)
    (874724710.0, 1.0)
    """
    raw = (request.get("context") or {}).get(CLOCK_CONTEXT_KEY)
    if raw is None or not raw.isdigit():
        return now
    return int(raw) / 1000.0


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
        version = self.backend.version  # read with the call: a version swapped in meanwhile did not score these
        asks = [(r["user_id"], r["k"], r["exclude"]) for r in valid]
        clocks = [request_clock(r, now) for r in valid]
        try:
            if all(clock == now for clock in clocks):
                results = await self.backend.recommend_many(asks, now)
            else:  # replayed requests carry their own clock: one call each
                results = []
                for ask, clock in zip(asks, clocks, strict=True):
                    results.extend(await self.backend.recommend_many([ask], clock))
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
                "items": disclose(to_record_items(items), self.settings.influences),  # RIPPLEREC_INFLUENCES
                "model_version": version + (COLD_START if cold and error is None else ""),
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


async def _behind(consumer: Any, tps: Sequence[Any]) -> bool:
    """Whether the consumer has messages of ``tps`` still to read, by the high watermarks its last
    fetches saw (older versions in a backlog are superseded: the trainer may have deleted their blobs)."""
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is not None and await consumer.position(tp) < highwater:
            return True
    return False
