"""The transformer scorer: frozen text encoder + online head, with influence explanations.

Construct it from plain data::

    scorer = TransformerScorer(encoder=TransformerEncoder())   # or HashingEncoder() in tests
    scorer.add_items(items)                                    # encodes (through the cache) once
    scorer.learn(interactions, now)                            # test-then-learn friendly
    scorer.recommend(UserState(user_id, history), k=10, exclude=seen, now=now)
    scorer.explain(UserState(user_id, history), item_id, now)  # -> list[Influence]
    scorer.save(folder); TransformerScorer.load(folder, encoder=...)

A trainer process that learns from a stream of ready-made examples (``ripple.training``) and serves
its weights to other processes uses the second half::

    report = scorer.learn_examples(examples)                   # test-then-learn, with metrics
    blob = scorer.export_head({"version_name": ...})           # one safetensors blob: a head version
    served = other.with_head(blob)                              # a scorer process loads it, by item id
    state = scorer.checkpoint({...}); TransformerScorer.restore(state, encoder=...)
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import weakref
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ripplerec.models.base import (
    ACTIONS,
    Behavior,
    Influence,
    Interaction,
    Item,
    ModelLoadError,
    RankingModel,
    ScoredItem,
    UserState,
    clocks_for,
    top_k_indices,
)
from ripplerec.models.catalog import grown
from ripplerec.models.count_features import (
    AlignedHistories,
    CountFeatures,
    Histories,
    recent_rows,
    standardised,
    weighted_row_sums,
)
from ripplerec.models.embedding_cache import EmbeddingCache
from ripplerec.models.encoder import TextEncoder
from ripplerec.models.head import RECENCY_BUCKETS, VALUE_BUCKETS, Head, HeadConfig, HistoryBatch
from ripplerec.models.replay_buffer import ReplayBuffer, ReplayExample, user_key
from ripplerec.models.serialization import FORMAT_VERSION, check_shapes, read_manifest, write_json
from ripplerec.models.trainer import OnlineTrainer, TrainerConfig

__all__ = [
    "TransformerScorerConfig", "TransformerScorer", "item_text", "Example", "LearnReport", "HEAD_FORMAT",
    "CHECKPOINT_FORMAT",
]

#: ``format`` of an exported head version (:meth:`TransformerScorer.export_head`) and of a checkpoint.
HEAD_FORMAT = "ripplerec.head"
CHECKPOINT_FORMAT = "ripplerec.checkpoint"

_PER_ITEM = ("item_bias", "item_ids", "item_counts")  # head tensors with one row per catalog item
_ACTION_INDEX = {action: i for i, action in enumerate(ACTIONS)}
TEXT_FEATURE_HISTORY = 10  # the text feature reads the user's last 10 items ...
TEXT_FEATURE_DECAY = 0.7  # ... the k-th most recent weighted 0.7 ** k
# up to here the text feature and the training of the text affinity share an (n, n) cosine matrix (100 MB at 5,000);
# beyond, scoring folds the text feature into the user vector and a top-k scans the item vectors in float16
TEXT_COSINES_MAX_ITEMS = 5_000
# a float16 scan's score is within HALF_SCAN_ERROR * |user| * |item| + HALF_SCAN_FLOOR * |user| of the float32 one:
# rounding the operands and the result to float16 is 3 * 2**-11 of that Cauchy-Schwarz bound, float32 sums of w
# terms w * 2**-24 more (w = 448 served), and the floor covers float16's subnormals (2**-25 a term); 2**-8 leaves
# a factor of 2.5 (tests/models check the bound against torch's float16 product)
HALF_SCAN_ERROR = 2.0**-8
HALF_SCAN_FLOOR = 2.0**-18


def item_text(item: Item) -> str:
    """The text the encoder reads for an item: its text, else its title plus attributes."""
    if item.text:
        return item.text if item.title in item.text else f"{item.title}. {item.text}"
    details = ". ".join(f"{key}: {value}" for key, value in sorted(item.attributes.items()) if value)
    return f"{item.title}. {details}" if details else item.title


@dataclass(frozen=True)
class Example:
    """One ready-made training example: the user's history *before* the positive, oldest first.

    ``ts`` and the history's timestamps are in seconds, as everywhere in the models; ``negatives`` are
    item ids the user did not pick, used for the example's AUC (training samples its own negatives).
    """

    user_id: str
    item_id: str
    action: str
    value: float | None
    ts: float
    history: tuple[Behavior, ...] = ()
    negatives: tuple[str, ...] = ()


@dataclass
class LearnReport:
    """What :meth:`TransformerScorer.learn_examples` did, and how well the model ranked each positive
    *before* learning it (test-then-learn): sums, so reports of several calls add up."""

    trained: int = 0  # examples learned
    unknown: int = 0  # examples whose positive is not in the catalog (not learned)
    hits: float = 0.0  # positives ranked in the top 10 of the full catalog (ties counted against them)
    ndcg: float = 0.0  # sum of NDCG@10
    auc: float = 0.0  # sum over examples with negatives of the share of them scored below the positive
    auc_examples: int = 0
    loss: float = 0.0  # sum of the training loss of each step
    steps: int = 0

    def add(self, other: LearnReport) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def metrics(self) -> dict[str, float]:
        """Means (``hr@10``, ``ndcg@10``, ``auc``, ``loss``) of the examples reported; empty when none."""
        out: dict[str, float] = {}
        if self.trained:
            out["hr@10"] = self.hits / self.trained
            out["ndcg@10"] = self.ndcg / self.trained
        if self.auc_examples:
            out["auc"] = self.auc / self.auc_examples
        if self.steps:
            out["loss"] = self.loss / self.steps
        return out


@dataclass(frozen=True)
class TransformerScorerConfig:
    """Everything that shapes the scorer's weights, saved as JSON beside them."""

    head: HeadConfig = field(default_factory=HeadConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    influences: int = 3  # influences attached to each recommended item

    def __post_init__(self) -> None:
        if self.influences < 0:
            raise ValueError("influences must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> TransformerScorerConfig:
        try:
            return cls(
                head=HeadConfig(**payload["head"]),
                trainer=TrainerConfig(**payload["trainer"]),
                influences=int(payload.get("influences", 3)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelLoadError(f"invalid scorer config: {error}") from error


class TransformerScorer(RankingModel):
    """Scores the whole catalog with ``user_vector . item_vector + bias``; learns the head online."""

    name = "transformer"

    def __init__(
        self,
        config: TransformerScorerConfig | None = None,
        encoder: TextEncoder | None = None,
        cache: EmbeddingCache | None = None,
        name: str | None = None,
    ) -> None:
        self.config = config or TransformerScorerConfig()
        if name is not None:
            self.name = name
        head_config = self.config.head
        if encoder is not None and head_config.uses_text and encoder.dim != head_config.text_dim:
            head_config = HeadConfig(**{**asdict(head_config), "text_dim": encoder.dim})
            self.config = TransformerScorerConfig(head_config, self.config.trainer, self.config.influences)
        self.encoder = encoder
        self.encoder_version = encoder.version if encoder is not None and head_config.uses_text else None
        self.cache = cache if cache is not None else EmbeddingCache(None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.trainer.seed)
            self.head = Head(head_config, capacity=0, seed=self.config.trainer.seed)
        self.head.eval()
        self.trainer = OnlineTrainer(self.head, self.config.trainer)
        self._item_ids: list[str] = []
        self._index_of: dict[str, int] = {}
        self._histories: dict[str, deque[Behavior]] = {}
        self._encoded: dict[str, _EncodedHistory] = {}
        self._vectors: torch.Tensor | None = None  # item vectors of the current weights
        # (a weak reference to the item vectors, them in float16, their rows' norms): see _top_rows
        self._half: tuple[weakref.ref[torch.Tensor], torch.Tensor, torch.Tensor] | None = None
        trainer_config = self.config.trainer
        self.replay = ReplayBuffer(
            trainer_config.replay_capacity, trainer_config.replay_window, trainer_config.replay_max_bytes
        )
        self._active = torch.zeros(0, dtype=torch.bool)  # items seen as positives
        # count features (co-occurrence, transitions) learned from every interaction, read by the hybrid head
        self._counts = CountFeatures.build(head_config.cooccurrence_feature, head_config.transition_feature)
        self._unit_text: NDArray[np.float32] | None = None  # normalised item texts, for the text feature
        # cosines of the item texts with each other (an item's text never changes once added), for the text
        # feature and the trainer's text affinity of a catalog up to TEXT_COSINES_MAX_ITEMS; filled for the
        # first _cosine_rows items
        self._text_cosines = np.zeros((0, 0), dtype=np.float32)
        self._cosine_rows = 0
        # above TEXT_COSINES_MAX_ITEMS, the moments of the unit item texts that fold the text feature into the
        # user vector when scoring (see _scores_with_folded_text)
        self._text_moments = _TextMoments(head_config.text_dim if head_config.uses_text else 0)
        # the name of the head version loaded with with_head (a trainer's announced version), if any
        self.version_name: str | None = None

    # -- identity ---------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        """The loaded head version's name when there is one, else config digest and training steps."""
        if self.version_name is not None:
            return self.version_name
        payload = json.dumps([self.config.to_dict(), self.encoder_version], sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
        return f"{self.name}-{digest}-s{self.trainer.steps}"

    @property
    def item_ids(self) -> Sequence[str]:
        return self._item_ids

    def _index(self) -> Mapping[str, int]:
        return self._index_of

    # -- catalog ----------------------------------------------------------------------------------
    def add_items(self, items: Sequence[Item], embeddings: NDArray[np.float32] | None = None) -> None:
        """Make items known; their text is encoded (through the cache) unless ``embeddings`` are given."""
        fresh = [item for item in dict((item.item_id, item) for item in items).values()]
        fresh = [item for item in fresh if item.item_id not in self._index_of]
        if not fresh:
            return
        start = len(self._item_ids)
        needed = start + len(fresh)
        moments_current = self._text_moments.matches(self.head.item_text)
        if needed > self.head.capacity:
            self.trainer.grow(max(needed, 2 * self.head.capacity, 64))
        if self.config.head.uses_text:
            if embeddings is None:
                if self.encoder is None:
                    raise ValueError(f"{self.name} represents items by text: pass an encoder or embeddings")
                embeddings = self.cache.encode(self.encoder, [item_text(item) for item in fresh])
            if embeddings.shape != (len(fresh), self.config.head.text_dim):
                raise ValueError(
                    f"embeddings shape {embeddings.shape}, expected {(len(fresh), self.config.head.text_dim)}"
                )
            with torch.no_grad():
                self.head.item_text[start:needed] = torch.from_numpy(np.ascontiguousarray(embeddings))
        for offset, item in enumerate(fresh):
            self._index_of[item.item_id] = start + offset
            self._item_ids.append(item.item_id)
        self._counts.grow(needed)
        self._vectors = None
        self._unit_text = None
        if moments_current:  # only rows after its own were written: the moments extend to them when next read
            self._text_moments.follow(self.head.item_text)

    # -- tensors from plain data ------------------------------------------------------------------
    def _encode(self, history: Sequence[Behavior]) -> list[tuple[int, int, float, float]]:
        """(catalog row, action index, value or NaN, ts) of the behaviours on known items, oldest first."""
        index = self._index_of
        return [
            (index[b.item_id], _ACTION_INDEX.get(b.action, 0), math.nan if b.value is None else b.value, b.ts)
            for b in history[-self.config.head.history_length :]
            if b.item_id in index
        ]

    def _history_batch(self, histories: Sequence[Sequence[Behavior]], nows: Sequence[float]) -> HistoryBatch:
        return self._batch_from_encoded([self._encode(history) for history in histories], nows)

    def _feature_scores(self, batch: HistoryBatch, rows: Sequence[int] | None = None) -> torch.Tensor | None:
        """The count features' part of the scores ``(B, n)`` for a batch of histories, or of the catalog ``rows``
        only ``(B, len(rows))`` (None without features).

        With ``rows`` above ``TEXT_COSINES_MAX_ITEMS`` items, the text feature of those rows alone, standardised
        as :meth:`_scores_with_folded_text` does it.
        """
        if not self.config.head.count_features:
            return None
        n = len(self._item_ids)
        with torch.no_grad():
            if rows is None or not self.config.head.text_feature or n <= TEXT_COSINES_MAX_ITEMS:
                scores = self.head.feature_scores(self._count_features(batch))
                return scores if rows is None else scores[:, list(rows)]
            histories = AlignedHistories(batch.items.numpy(), batch.mask.numpy())
            profiles, scale, offset = self._text_terms(histories, n)
            index = torch.tensor(list(rows), dtype=torch.long)
            texts = nn.functional.normalize(self.head.item_text[index], dim=-1)
            scores = (profiles @ texts.T * scale.unsqueeze(1) + offset.unsqueeze(1)) * self._feature_weights()[-1]
            counts = self._weighted_counts(histories, n)
            return scores if counts is None else scores + counts[:, index]

    def _count_features(self, batch: HistoryBatch, users: int | None = None) -> torch.Tensor:
        """The count features ``(B, K, n)`` of the histories in ``batch`` (its first ``users`` only, when given)."""
        rows, mask = batch.items[:users], batch.mask[:users]
        histories = AlignedHistories(rows.numpy(), mask.numpy())
        n = len(self._item_ids)
        # laid out feature by feature, as a (B, K, n) view: each feature's (B, n) plane is then contiguous, for
        # the numpy work here and for the head's products with the feature weights
        planes = np.empty((self.config.head.count_features, len(histories), n), dtype=np.float32)
        features = planes.transpose(1, 0, 2)
        self._counts.features(histories, n, out=features[:, : len(self._counts)])
        if self.config.head.text_feature:  # the text feature comes last
            self._text_feature(histories, n, out=features[:, -1])
        return torch.from_numpy(features)

    def _text_feature(
        self, histories: Histories, n: int, out: NDArray[np.float32] | None = None
    ) -> NDArray[np.float32]:
        """Standardised cosine of every item's text with each user's recency-weighted recent texts ``(B, n)``,
        written into ``out`` when given.

        Up to ``TEXT_COSINES_MAX_ITEMS`` items, the weighted sum of the recent items' rows of the kept
        cosine matrix (a few rows per user); beyond, the weighted recent texts times every item's text.
        """
        rows, weights = recent_rows(histories, TEXT_FEATURE_HISTORY, TEXT_FEATURE_DECAY)
        used = weights.any(axis=1)
        if out is None:
            out = np.empty((len(histories), n), dtype=np.float32)
        every = bool(used.all())
        if not every:
            out[~used] = 0.0
        if not used.any():
            return out
        if not every:
            rows, weights = rows[used], weights[used]
        if n <= TEXT_COSINES_MAX_ITEMS:
            raw = weighted_row_sums(self._cosines(n), rows, weights, n)
        else:  # products in torch, which keeps to its thread setting (numpy's BLAS would start its own threads)
            unit = torch.from_numpy(self._unit_texts(n))
            recent, recent_weights = torch.from_numpy(rows), torch.from_numpy(weights)
            profiles = nn.functional.embedding_bag(recent, unit, per_sample_weights=recent_weights, mode="sum")
            raw = (profiles @ unit.T).numpy()
        if every:  # the usual case: straight into out, without the row copies
            standardised(raw, out=out)
        else:
            out[used] = standardised(raw)
        return out

    def _unit_texts(self, n: int) -> NDArray[np.float32]:
        """The first ``n`` item texts, normalised ``(n, text_dim)``."""
        if self._unit_text is None:
            text = self.head.item_text[:n].numpy()
            self._unit_text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
        return self._unit_text

    def _cosines(self, n: int) -> NDArray[np.float32]:
        """Cosines of the first ``n`` items' texts with each other (at least ``(n, n)``), extended as items
        arrive: only the new items' rows (and columns) are computed."""
        done = self._cosine_rows
        if done < n:
            unit = torch.from_numpy(self._unit_texts(n))
            fresh = (unit[done:n] @ unit.T).numpy()  # (new items, n)
            self._text_cosines = grown(self._text_cosines, n, axes=(0, 1))
            self._text_cosines[done:n, :n] = fresh
            self._text_cosines[:done, done:n] = fresh[:, :done].T
            self._cosine_rows = n
        return self._text_cosines

    def _affinity_cosines(self) -> torch.Tensor | None:
        """The kept text cosines (a view, no copy) for the trainer to score the text affinity from; None
        without text affinity or above ``TEXT_COSINES_MAX_ITEMS`` items (the trainer then uses the text columns)."""
        n = len(self._item_ids)
        if not self.config.head.text_affinity or n > TEXT_COSINES_MAX_ITEMS:
            return None
        return torch.from_numpy(self._cosines(n))

    def _batch_from_encoded(
        self, encoded: Sequence[Sequence[tuple[int, int, float, float]] | NDArray[np.float64]], nows: Sequence[float]
    ) -> HistoryBatch:
        """Tensors for histories given as (row, action, value, ts) rows, oldest first."""
        length = self.config.head.history_length
        table = np.zeros((len(encoded), length, 4), dtype=np.float64)
        used = np.zeros(len(encoded), dtype=np.int64)
        for row, behaviours in enumerate(encoded):
            used[row] = count = min(len(behaviours), length)
            if count:  # left-padded: the most recent behaviour is in the last slot
                table[row, length - count :] = behaviours[len(behaviours) - count :]
        mask = np.arange(length) >= (length - used)[:, None]
        values = table[:, :, 2]
        value_buckets = np.where(np.isnan(values), 0, 1 + np.clip(np.rint(np.nan_to_num(values)), 0, VALUE_BUCKETS - 2))
        ages = np.asarray(nows, dtype=np.float64)[:, None] - table[:, :, 3]
        recency = np.where(ages > 0, np.minimum(np.log2(1.0 + np.maximum(ages, 0.0)), RECENCY_BUCKETS - 1), 0)
        return HistoryBatch(
            torch.from_numpy(table[:, :, 0].astype(np.int64)),
            torch.from_numpy(table[:, :, 1].astype(np.int64)),
            torch.from_numpy((value_buckets * mask).astype(np.int64)),
            torch.from_numpy((recency * mask).astype(np.int64)),
            torch.from_numpy(mask),
        )

    def _item_vectors(self) -> torch.Tensor:
        if self._vectors is None:
            with torch.no_grad():
                self._vectors = self.head.item_vectors(torch.arange(len(self._item_ids)))
        return self._vectors

    # -- learning ---------------------------------------------------------------------------------
    def learn(self, interactions: Sequence[Interaction], now: float) -> None:
        """Learn from interactions in order; the model keeps each user's recent history for this.

        Each interaction is trained with the user's history *before* it; events on unknown items only
        extend the history. ``now`` is the batch's clock; ages use each interaction's own timestamp.
        """
        length = self.config.head.history_length
        histories: list[NDArray[np.float64]] = []
        positives: list[int] = []
        clocks: list[float] = []
        users: list[str] = []
        for event in interactions:
            history = self._histories.get(event.user_id)
            if history is None:
                history = self._histories[event.user_id] = deque(maxlen=length)
                self._encoded[event.user_id] = _EncodedHistory(length)
            encoded = self._encoded[event.user_id]
            row = self._index_of.get(event.item_id)
            if row is not None:
                histories.append(encoded.snapshot())
                positives.append(row)
                clocks.append(event.ts)
                users.append(event.user_id)
                value = math.nan if event.value is None else event.value
                encoded.append((row, _ACTION_INDEX.get(event.action, 0), value, event.ts))
            history.append(Behavior(event.item_id, event.action, event.value, event.ts))
        size = self.config.trainer.batch_size
        for start in range(0, len(positives), size):
            examples = list(
                zip(
                    histories[start : start + size],
                    positives[start : start + size],
                    clocks[start : start + size],
                    strict=True,
                )
            )
            self._train_examples(examples, users=users[start : start + size])
            if len(self._counts):  # counts learn after the step: it saw the features a scorer saw before
                learned = zip(users[start : start + size], positives[start : start + size], strict=True)
                self._counts.add_many(list(learned))
        if positives:
            self._count(positives)
            self._vectors = None

    def _count(self, rows: Sequence[int]) -> None:
        """Add learned interactions to the per-item counts the id gate reads."""
        if self.config.head.gated:
            with torch.no_grad():
                self.head.item_counts.index_add_(
                    0, torch.tensor(list(rows)), torch.ones(len(rows), dtype=self.head.item_counts.dtype)
                )

    def _train_examples(
        self,
        examples: list[tuple[NDArray[np.float64], int, float]],
        features: torch.Tensor | None = None,
        users: Sequence[str] | None = None,
    ) -> float:
        """One trainer step on ``examples`` plus replayed past ones; then remember them for replay.

        ``features``: the examples' count features when the caller computed them already; ``users``: whose
        examples they are (what :meth:`forget_user` finds them by). Returns the loss.
        """
        config = self.config.trainer
        batch = list(examples)
        if config.replay:
            batch += [e.as_training() for e in self.replay.sample(config.replay, self.trainer.generator)]
        histories = [example[0] for example in batch]
        encoded = self._batch_from_encoded(histories, [example[2] for example in batch])
        rows = torch.tensor([example[1] for example in batch])
        active = None
        if config.active_negatives:
            if self._active.shape[0] < len(self._item_ids):
                self._active = torch.cat(
                    [self._active, torch.zeros(len(self._item_ids) - self._active.shape[0], dtype=torch.bool)]
                )
            self._active[rows] = True
            active = self._active
        if features is None and self.config.head.count_features:
            # only the new examples carry features: theirs are the counts before they were learned, as at
            # scoring time; a replayed example's would include itself and what came after it
            features = self._count_features(encoded, len(examples))
        loss = self.trainer.step(encoded, rows, len(self._item_ids), active, features, self._affinity_cosines())
        if config.replay:
            keys = [user_key(u) for u in users] if users is not None else [0] * len(examples)
            for (history, row, ts), key in zip(examples, keys, strict=True):
                self.replay.add(ReplayExample(key, history, row, ts), self.trainer.generator)
        return loss

    def forget_user(self, user_id: str) -> int:
        """Drop what this scorer keeps about ``user_id``: replay examples, learning history, count windows.

        The co-occurrence and transition sums the user's interactions added to stay (they are sums over
        every user, not per user); the user's own recent-item windows go. Returns records dropped.
        """
        return self.forget_user_keys([user_key(user_id)], [user_id])

    def forget_user_keys(self, keys: Collection[int], user_ids: Collection[str] = ()) -> int:
        """:meth:`forget_user` for users given by :func:`~ripplerec.models.replay_buffer.user_key` (a forget
        request that does not carry the id), and ``user_ids``."""
        wanted = set(keys) | {user_key(u) for u in user_ids}
        dropped = self.replay.forget_keys(wanted)
        for user in [u for u in self._histories if user_key(u) in wanted]:
            del self._histories[user]
            self._encoded.pop(user, None)
            dropped += 1
        for _, counts in self._counts.enabled:
            for user in [u for u in counts.recent if user_key(u) in wanted]:
                del counts.recent[user]
                dropped += 1
        return dropped

    def fit(self, users: Sequence[UserState], positives: Sequence[str], now: float) -> float:
        """One training step on explicit examples (a trainer that holds user states elsewhere)."""
        rows = [self._index_of[item_id] for item_id in positives]
        encoded = [self._encode(user.history) for user in users]
        batch = self._batch_from_encoded(encoded, [now] * len(users))
        features = self._count_features(batch) if self.config.head.count_features else None
        loss = self.trainer.step(
            batch, torch.tensor(rows), len(self._item_ids), features=features, text_cosines=self._affinity_cosines()
        )
        self._count(rows)
        self._vectors = None
        return loss

    def learn_examples(self, examples: Sequence[Example], top: int = 10) -> LearnReport:
        """Test, then learn, ready-made examples in order (a trainer fed by ``ripple.training``).

        Each chunk of ``config.trainer.batch_size`` examples is first scored with the current weights (rank of
        the positive among the whole catalog less the example's history, ties counted against it: HR and
        NDCG at ``top``; AUC against the example's negatives), then learned in one trainer step (plus replay),
        after which the count features learn it. Examples on unknown items are counted, not learned; history
        entries on unknown items are dropped.
        """
        report = LearnReport()
        index = self._index_of
        pending: list[tuple[NDArray[np.float64], int, float, str, tuple[str, ...]]] = []
        for example in examples:
            row = index.get(example.item_id)
            if row is None:
                report.unknown += 1
                continue
            encoded = np.asarray(self._encode(example.history), dtype=np.float64).reshape(-1, 4)
            pending.append((encoded, row, example.ts, example.user_id, example.negatives))
        size = self.config.trainer.batch_size
        for start in range(0, len(pending), size):
            chunk = pending[start : start + size]
            histories = [c[0] for c in chunk]
            rows = [c[1] for c in chunk]
            batch = self._batch_from_encoded(histories, [c[2] for c in chunk])
            features = self._count_features(batch) if self.config.head.count_features else None
            self._test(report, batch, rows, [c[4] for c in chunk], features, top)
            learned = list(zip(histories, rows, [c[2] for c in chunk], strict=True))
            report.loss += self._train_examples(learned, features, [c[3] for c in chunk])
            report.steps += 1
            report.trained += len(chunk)
            if len(self._counts):  # counts learn after the step: it saw the features a scorer saw before
                self._counts.add_many([(c[3], c[1]) for c in chunk])
            self._count(rows)
            self._vectors = None
        return report

    def _test(
        self,
        report: LearnReport,
        batch: HistoryBatch,
        rows: Sequence[int],
        negatives: Sequence[Sequence[str]],
        features: torch.Tensor | None,
        top: int,
    ) -> None:
        """Add the ranking metrics of the positives ``rows`` under the current weights to ``report``."""
        n = len(self._item_ids)
        with torch.no_grad():
            vectors = self._item_vectors()
            users, _ = self.head.user_vectors(batch, vectors)
            scores = users @ vectors.T + self.head.biases(slice(0, n))
            if features is not None:
                scores = scores + self.head.feature_scores(features)
        positives = torch.tensor(list(rows))
        picked = torch.arange(len(rows))
        own = scores[picked, positives].clone()
        seen = batch.mask & (batch.items != positives.unsqueeze(1))  # the history, except a repeat of the positive
        owners = picked.unsqueeze(1).expand_as(batch.items)
        scores[owners[seen], batch.items[seen]] = -torch.inf
        rank = (scores >= own.unsqueeze(1)).sum(dim=1) - 1  # pessimistic: a tie ranks above the positive
        hit = rank < top
        report.hits += float(hit.sum())
        report.ndcg += float((hit / torch.log2(rank.to(torch.float64) + 2.0)).sum())
        index = self._index_of
        for b, ids in enumerate(negatives):
            known = [index[i] for i in ids if i in index and i != self._item_ids[rows[b]]]
            if known:
                against = scores[b, known]
                report.auc += float((against < own[b]).sum() + 0.5 * (against == own[b]).sum()) / len(known)
                report.auc_examples += 1

    # -- scoring ----------------------------------------------------------------------------------
    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        if not users:
            return np.zeros((0, len(self._item_ids)), dtype=np.float32)
        clocks = clocks_for(users, now)
        encoded = [self._encode(u.history) for u in users]
        batch = self._batch_from_encoded(encoded, clocks)
        with torch.no_grad():
            vectors = self._item_vectors()
            user_vectors, _ = self.head.user_vectors(batch, vectors)
            if self.config.head.text_feature and len(self._item_ids) > TEXT_COSINES_MAX_ITEMS:
                scores = self._scores_with_folded_text(batch, user_vectors, vectors)
            else:
                scores = user_vectors @ vectors.T + self.head.biases(slice(0, len(self._item_ids)))
                extra = self._feature_scores(batch)
                if extra is not None:
                    scores = scores + extra
        return scores.numpy().astype(np.float32, copy=False)

    def _scores_with_folded_text(
        self, batch: HistoryBatch, user_vectors: torch.Tensor, vectors: torch.Tensor
    ) -> torch.Tensor:
        """Scores of the whole catalog ``(B, n)`` with the text feature folded into the user vectors.

        The text feature of item ``i`` is ``(p . u_i - mean) / spread``, for the user's recency-weighted recent
        unit texts ``p`` and the unit item texts ``u``; the mean and spread over the catalog follow from ``p``
        and the texts' moments (:meth:`_text_terms`), so the feature is ``p / spread`` in the user vector's text
        columns (with text affinity, whose columns are the unit texts) and a constant per user. The catalog's
        texts are then read once per request, not twice, and the feature's ``(B, n)`` values are never made.
        The same scores as :meth:`_text_feature` and :meth:`Head.feature_scores`, up to rounding.
        """
        users, rest = self._folded(batch, user_vectors, vectors)
        width = vectors.shape[1]
        if users.shape[1] == width:  # text affinity: its columns are the unit texts
            return torch.addmm(rest, users, vectors.T)
        n = len(self._item_ids)
        return torch.addmm(torch.addmm(rest, users[:, :width], vectors.T), users[:, width:], self.head.unit_texts(n).T)

    def _folded(
        self, batch: HistoryBatch, user_vectors: torch.Tensor, vectors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_scores_with_folded_text` in two parts: user vectors with the text feature folded into their text
        columns ``(B, width)`` and what is added to their products ``(B, n)`` (biases, the text feature's constant,
        the count features). Without text affinity the folded columns come after the user vector's own, for the
        unit item texts."""
        n = len(self._item_ids)
        d = self.config.head.dim
        histories = AlignedHistories(batch.items.numpy(), batch.mask.numpy())
        profiles, scale, offset = self._text_terms(histories, n)
        text_weight = self._feature_weights()[-1]
        folded = profiles * (text_weight * scale).unsqueeze(1)
        if vectors.shape[1] > d:  # text affinity: its columns are the unit texts
            users = user_vectors.clone()
            users[:, d:] += folded
        else:
            users = torch.cat([user_vectors, folded], dim=1)
        rest = self.head.biases(slice(0, n)) + (text_weight * offset).unsqueeze(1)
        counts = self._weighted_counts(histories, n)
        if counts is not None:
            rest += counts
        return users, rest

    def _top_rows(
        self, user: UserState, k: int, exclude: Collection[str], now: float | None
    ) -> list[tuple[int, float]] | None:
        """The top-``k`` catalog rows for ``user`` and their scores, best first (ties by lower row), none from
        ``exclude``, by a half-precision scan: None where it does not apply (up to ``TEXT_COSINES_MAX_ITEMS``
        items, or without the folded text feature's text-affinity columns; ``score_all`` then).

        One request reads every item's row of the item vectors (text columns included), which is what its time
        goes to; in float16 it reads half the bytes. The scan's scores are within a bound of the float32 ones
        (:data:`HALF_SCAN_ERROR`), so every item whose bound reaches the ``k``-th best lower bound is a candidate
        (the true top-``k`` among them) and the candidates alone are scored in float32: the same items, in the
        same order, as from :meth:`score_all`, up to float32 rounding.
        """
        n = len(self._item_ids)
        config = self.config.head
        if not (config.text_feature and config.text_affinity) or n <= TEXT_COSINES_MAX_ITEMS or k >= n:
            return None
        batch = self._history_batch([user.history], clocks_for([user], now))
        with torch.no_grad():
            vectors = self._item_vectors()
            user_vectors, _ = self.head.user_vectors(batch, vectors)
            users, rest = self._folded(batch, user_vectors, vectors)
            query, rest = users[0], rest[0]
            norm = float(query.norm())
            if not 0.0 < norm < math.inf:
                return None
            half, row_norms = self._half_vectors(vectors)
            if not row_norms.shape[0]:  # an item vector beyond float16's range
                return None
            # the query scaled to unit length: the products stay within the item rows' norms, far from float16's
            # range limits
            approx = (half @ (query / norm).to(torch.float16)).float().mul_(norm).add_(rest)
            margin = row_norms * (norm * HALF_SCAN_ERROR) + norm * HALF_SCAN_FLOOR
            lower = approx - margin
            excluded = torch.tensor([self._index_of[i] for i in exclude if i in self._index_of], dtype=torch.long)
            lower[excluded] = -torch.inf
            threshold = torch.topk(lower, min(k, n)).values[-1]
            if not bool(torch.isfinite(threshold)):  # fewer than k items left: score them all
                return None
            candidate = approx.add_(margin) >= threshold
            candidate[excluded] = False
            rows = torch.nonzero(candidate).flatten()  # ascending: ties go to the lower row, as in top_k_indices
            exact = torch.addmv(rest[rows], vectors[rows], query).numpy()
        order = top_k_indices(exact, k)
        return [(int(rows[i]), float(exact[i])) for i in order]

    def _half_vectors(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``vectors`` in float16 and the norms of their rows (float32), kept while ``vectors`` are the item
        vectors (a weak reference: the old ones are not held once learning replaced them)."""
        kept = self._half
        if kept is not None and kept[0]() is vectors:
            return kept[1], kept[2]
        half, norms = vectors.to(torch.float16), vectors.norm(dim=1)
        if not bool(torch.isfinite(half).all()):  # no scan (an empty norms says so)
            half, norms = half[:0], norms[:0]
        self._half = (weakref.ref(vectors), half, norms)
        return half, norms

    def _text_terms(self, histories: AlignedHistories, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each user's recency-weighted recent unit texts ``p`` ``(B, text_dim)``, and the ``scale`` and ``offset``
        ``(B,)`` that make the text feature of the first ``n`` items ``(unit texts @ p) * scale + offset``."""
        rows, weights = recent_rows(histories, TEXT_FEATURE_HISTORY, TEXT_FEATURE_DECAY)
        recent = nn.functional.normalize(self.head.item_text[torch.from_numpy(rows)], dim=-1)  # a few rows each
        profiles = torch.einsum("bl,blt->bt", torch.from_numpy(weights), recent)
        scale, offset = self._text_moments.update(self.head.item_text, n).standardising(profiles.numpy(), n)
        return profiles, torch.from_numpy(scale), torch.from_numpy(offset)

    def _weighted_counts(self, histories: AlignedHistories, n: int) -> torch.Tensor | None:
        """The count features (without the text feature) times their weights, summed ``(B, n)``; None without."""
        if not len(self._counts):
            return None
        # laid out as in _count_features: each feature's (B, n) plane contiguous
        planes = np.empty((len(self._counts), len(histories), n), dtype=np.float32)
        self._counts.features(histories, n, out=planes.transpose(1, 0, 2))
        weights = self._feature_weights()
        scores = torch.from_numpy(planes[0]) * weights[0]
        for k in range(1, len(planes)):
            scores += torch.from_numpy(planes[k]) * weights[k]
        return scores

    def _feature_weights(self) -> torch.Tensor:
        weights = self.head.feature_weights
        if weights is None:
            raise ValueError("this head has no count features")
        return weights

    def _leave_one_out(
        self, user: UserState, now: float | None, rows: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor | None]:
        """User vectors with all behaviours (row 0) and with each one removed (rows 1..), the attention
        weights of the behaviours, their positions in ``user.history``, and the count features' scores of
        the same variants for the catalog ``rows`` (a column each; None without count features)."""
        clock = clocks_for([user], now)[0]
        length = self.config.head.history_length
        history = user.history
        # the behaviours _encode keeps (known items among the last L), oldest first
        positions = [
            p for p in range(max(0, len(history) - length), len(history)) if history[p].item_id in self._index_of
        ]
        encoded = self._encode(history)
        variants = [encoded] + [encoded[:i] + encoded[i + 1 :] for i in range(len(encoded))]
        batch = self._batch_from_encoded(variants, [clock] * len(variants))
        with torch.no_grad():
            user_vectors, weights = self.head.user_vectors(batch, self._item_vectors())
        return user_vectors, weights[0, length - len(encoded) :], positions, self._feature_scores(batch, rows)

    def _influences(
        self,
        user: UserState,
        user_vectors: torch.Tensor,
        weights: torch.Tensor,
        positions: list[int],
        row: int,
        extra: torch.Tensor | None = None,
    ) -> list[Influence]:
        """``extra``: the count features' scores of ``row`` for each variant of :meth:`_leave_one_out` ``(V,)``."""
        vectors = self._item_vectors()
        with torch.no_grad():
            scores = user_vectors @ vectors[row]  # bias cancels in the differences
            if extra is not None:
                scores = scores + extra
        deltas = (scores[0] - scores[1:]).tolist()
        influences = [
            Influence(
                user.history[position].item_id,
                user.history[position].action,
                user.history[position].ts,
                float(weight),
                float(delta),
            )
            for position, weight, delta in zip(positions, weights.tolist(), deltas, strict=True)
        ]
        influences.sort(key=lambda influence: (-influence.delta, -influence.weight))
        return influences

    def explain(self, user: UserState, item_id: str, now: float | None = None) -> list[Influence]:
        """Past behaviours of ``user``, most influential first, for the score of ``item_id``.

        ``delta`` is score(with all behaviours) - score(with this one removed from the history);
        ``weight`` is its attention weight (mean over heads).
        """
        row = self._index_of.get(item_id)
        if row is None:
            raise KeyError(f"unknown item {item_id!r}")
        if not user.history:
            return []
        user_vectors, weights, positions, extra = self._leave_one_out(user, now, [row])
        return self._influences(user, user_vectors, weights, positions, row, None if extra is None else extra[:, 0])

    def recommend(
        self, user: UserState, k: int, exclude: Collection[str] = (), now: float | None = None
    ) -> list[ScoredItem]:
        """Top-k items with their strongest ``config.influences`` influences attached."""
        scanned = self._top_rows(user, k, exclude, now) if k > 0 else None
        if scanned is None:
            top = super().recommend(user, k, exclude, now)
        else:
            top = [ScoredItem(self._item_ids[row], score) for row, score in scanned if math.isfinite(score)]
        if not top or not user.history or self.config.influences == 0:
            return top
        rows = [self._index_of[scored.item_id] for scored in top]
        user_vectors, weights, positions, extra = self._leave_one_out(user, now, rows)
        if not positions:
            return top
        out = []
        for column, (scored, row) in enumerate(zip(top, rows, strict=True)):
            column_extra = None if extra is None else extra[:, column]
            influences = self._influences(user, user_vectors, weights, positions, row, column_extra)
            out.append(ScoredItem(scored.item_id, scored.score, tuple(influences[: self.config.influences])))
        return out

    def top_k(self, user: UserState, k: int, now: float | None = None) -> list[tuple[str, float]]:
        """Top-k (item, score) over the whole catalog without influences (the fast path)."""
        scanned = self._top_rows(user, k, (), now) if k > 0 else None
        if scanned is not None:
            return [(self._item_ids[row], score) for row, score in scanned]
        scores = self.score_all(user, now)
        return [(self._item_ids[i], float(scores[i])) for i in top_k_indices(scores, k)]

    # -- persistence ------------------------------------------------------------------------------
    def _manifest(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "steps": self.trainer.steps,
            "examples": self.trainer.examples,
            "encoder_version": self.encoder_version,
            "config": self.config.to_dict(),
            "n_items": len(self._item_ids),
        }

    def head_state(self) -> dict[str, torch.Tensor]:
        """The learned head weights (no item text: that comes from the encoder)."""
        n = len(self._item_ids)
        state = {}
        for key, value in self.head.state_dict().items():
            if key == "item_text":
                continue
            state[key] = (value[:n] if key in _PER_ITEM else value).detach().clone().contiguous()
        return state

    def save_head(self, directory: str | Path) -> None:
        """Write only the head (``head.safetensors`` + ``head.json``), for a trainer publishing versions."""
        from safetensors.torch import save_file

        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".head.safetensors.tmp"
        save_file(self.head_state(), str(tmp))
        tmp.replace(folder / "head.safetensors")
        write_json(folder / "head.json", {**self._manifest(), "item_ids": self._item_ids})

    def load_head(self, directory: str | Path) -> None:
        """Replace the head weights with ones written by :meth:`save_head` (same config, known items)."""
        from safetensors.torch import load_file

        folder = Path(directory)
        manifest = read_manifest(folder, type(self).__name__, "head.json")
        if manifest["config"]["head"] != asdict(self.config.head):
            raise ModelLoadError(f"{folder}: head config {manifest['config']['head']} != {asdict(self.config.head)}")
        saved_ids = list(manifest.get("item_ids", []))
        if saved_ids != self._item_ids[: len(saved_ids)]:
            raise ModelLoadError(f"{folder}: saved head's items are not a prefix of this scorer's catalog")
        state = load_file(str(folder / "head.safetensors"))
        current = self.head_state()
        expected = {
            key: (len(saved_ids),) + tuple(value.shape[1:]) if key in _PER_ITEM else tuple(value.shape)
            for key, value in current.items()
        }
        check_shapes(str(folder / "head.safetensors"), expected, {k: tuple(v.shape) for k, v in state.items()})
        with torch.no_grad():
            for key, value in state.items():
                target = getattr(self.head, key) if key in _PER_ITEM else None
                if target is not None:
                    target[: len(saved_ids)] = value
                else:
                    self.head.state_dict()[key].copy_(value)
        self.trainer.steps = int(manifest.get("steps", self.trainer.steps))
        self.trainer.examples = int(manifest.get("examples", self.trainer.examples))
        self._vectors = None

    def set_anchor(self, directory: str | Path | None = None) -> None:
        """Anchor the L2 pull at a saved head's dense weights, or at the current weights when None."""
        if directory is None:
            self.trainer.set_anchor()
            return
        from safetensors.torch import load_file

        state = load_file(str(Path(directory) / "head.safetensors"))
        self.trainer.set_anchor({name: state[name] for name in self.head.dense_parameters() if name in state})

    def save(self, directory: str | Path) -> None:
        """Write config, head weights, item embeddings and learning histories into ``directory``.

        The optimizer state and the replay reservoir are runtime state and are not saved: a loaded scorer
        scores exactly like the saved one, and continues learning with a fresh optimizer.
        """
        from safetensors.torch import save_file

        folder = Path(directory)
        self.save_head(folder)
        n = len(self._item_ids)
        tmp = folder / ".items.safetensors.tmp"
        active = torch.zeros(n, dtype=torch.uint8)
        active[: min(n, self._active.shape[0])] = self._active[:n].to(torch.uint8)
        save_file({"item_text": self.head.item_text[:n].contiguous(), "active": active}, str(tmp))
        tmp.replace(folder / "items.safetensors")
        histories = {
            user: [[b.item_id, b.action, b.value, b.ts] for b in history] for user, history in self._histories.items()
        }
        if len(self._counts):
            tmp = folder / ".counts.safetensors.tmp"
            counts = {key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in self._counts.state(n).items()}
            save_file(counts, str(tmp))
            tmp.replace(folder / "counts.safetensors")
        write_json(folder / "histories.json", {"histories": histories, "count_recent": self._counts.recent()})
        write_json(folder / "config.json", {**self._manifest(), "item_ids": self._item_ids})

    @classmethod
    def load(
        cls, directory: str | Path, encoder: TextEncoder | None = None, cache: EmbeddingCache | None = None
    ) -> TransformerScorer:
        """Rebuild a scorer written by :meth:`save`; with ``encoder``, its version must match the saved one."""
        from safetensors.torch import load_file

        folder = Path(directory)
        manifest = read_manifest(folder, cls.__name__)
        config = TransformerScorerConfig.from_dict(manifest["config"])
        saved_encoder = manifest.get("encoder_version")
        if encoder is not None and config.head.uses_text and encoder.version != saved_encoder:
            raise ModelLoadError(
                f"{folder} was trained with encoder {saved_encoder!r}, not {encoder.version!r}: "
                "re-encode items or load with the matching encoder"
            )
        scorer = cls.__new__(cls)
        TransformerScorer.__init__(scorer, config, encoder, cache, manifest.get("name"))
        scorer.encoder_version = saved_encoder
        item_ids = list(manifest.get("item_ids", []))
        if config.head.uses_text:
            text = load_file(str(folder / "items.safetensors"))["item_text"]
            if tuple(text.shape) != (len(item_ids), config.head.text_dim):
                raise ModelLoadError(
                    f"{folder}/items.safetensors holds {tuple(text.shape)}, "
                    f"expected {(len(item_ids), config.head.text_dim)}"
                )
            embeddings: NDArray[np.float32] | None = text.numpy()
        else:
            embeddings = None
        scorer.add_items([Item(item_id, item_id) for item_id in item_ids], embeddings)
        scorer.load_head(folder)
        items_path = folder / "items.safetensors"
        if items_path.is_file():
            saved = load_file(str(items_path))
            if "active" in saved and tuple(saved["active"].shape) == (len(item_ids),):
                scorer._active = saved["active"].bool()
        histories_path = folder / "histories.json"
        saved_histories = json.loads(histories_path.read_text()) if histories_path.is_file() else {}
        if len(scorer._counts):
            counts_path = folder / "counts.safetensors"
            if not counts_path.is_file():
                raise ModelLoadError(f"{counts_path} not found")
            arrays = {k: v.numpy() for k, v in load_file(str(counts_path)).items()}
            scorer._counts.restore(arrays, saved_histories.get("count_recent", {}), len(item_ids))
        if saved_histories:
            length = config.head.history_length
            for user, rows in saved_histories["histories"].items():
                scorer._histories[user] = deque(
                    (Behavior(str(i), str(a), None if v is None else float(v), float(t)) for i, a, v, t in rows),
                    maxlen=length,
                )
                scorer._encoded[user] = _EncodedHistory(length, scorer._encode(list(scorer._histories[user])))
        return scorer

    # -- head versions and checkpoints (bytes, for a model store) --------------------------------------
    def export_head(self, extra: Mapping[str, Any] | None = None) -> bytes:
        """This head as one safetensors blob: what another process needs to score like this one.

        Holds the learned head weights (no item text: a scorer encodes its items itself, with the
        same encoder) and the count features, one row per item of this scorer's catalog, and in the
        safetensors metadata a JSON manifest (format, config, encoder version, item ids, steps, and
        ``extra``: e.g. the version's name). :meth:`with_head` reads it back by item id.
        """
        from safetensors.torch import save

        n = len(self._item_ids)
        tensors = {f"head.{key}": value for key, value in self.head_state().items()}
        for key, value in self._counts.state(n).items():
            tensors[f"counts.{key}"] = torch.from_numpy(np.ascontiguousarray(value))
        manifest = {**self._manifest(), "format": HEAD_FORMAT, "item_ids": list(self._item_ids), **(extra or {})}
        return bytes(save(tensors, metadata={"manifest": json.dumps(manifest)}))

    def with_head(self, blob: bytes, source: str = "head version") -> TransformerScorer:
        """A new scorer with this one's config, encoder and catalog and the weights of an exported head.

        Rows are matched by item id, so the exporting scorer's catalog may be in another order, lack
        some of this one's items (they keep fresh weights) or hold items this one lacks (left out).
        Raises :class:`ModelLoadError` when ``blob`` is not an exported head, was made for another head
        config or encoder, or holds tensors of the wrong shapes or non-finite values; ``self`` is never
        changed, so a caller keeps serving it. Safe to run in a thread while ``self`` serves.
        """
        from safetensors.torch import load

        manifest = _manifest_of(blob, source)
        if manifest.get("format") != HEAD_FORMAT:
            raise ModelLoadError(f"{source}: format {manifest.get('format')!r}, expected {HEAD_FORMAT!r}")
        self._check_compatible(manifest, source)
        try:
            tensors = load(blob)
        except Exception as error:  # safetensors raises its own error types
            raise ModelLoadError(f"{source}: unreadable tensors: {error}") from error
        saved_ids = [str(i) for i in manifest.get("item_ids", [])]
        n_saved = len(saved_ids)
        expected = {f"head.{key}": (n_saved,) + tuple(v.shape[1:]) if key in _PER_ITEM else tuple(v.shape)
                    for key, v in self.head_state().items()}
        found = {key: tuple(v.shape) for key, v in tensors.items()}
        saved_counts = {key[len("counts.") :]: shape for key, shape in found.items() if key.startswith("counts.")}
        expected.update({f"counts.{key}": shape for key, shape in self._counts.shapes(n_saved, saved_counts).items()})
        check_shapes(source, expected, found)
        bad = [key for key, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ModelLoadError(f"{source}: non-finite values in {', '.join(sorted(bad))}")

        n = len(self._item_ids)
        ids = list(self._item_ids[:n])
        new = TransformerScorer(self.config, self.encoder, self.cache, self.name)
        new.encoder_version = self.encoder_version
        embeddings = self.head.item_text[:n].numpy().copy() if self.config.head.uses_text else None
        new.add_items([Item(item_id, item_id) for item_id in ids], embeddings)
        index = new._index_of
        mine = [(row, index[item_id]) for row, item_id in enumerate(saved_ids) if item_id in index]
        from_rows = torch.tensor([a for a, _ in mine], dtype=torch.long)
        to_rows = torch.tensor([b for _, b in mine], dtype=torch.long)
        with torch.no_grad():
            state = new.head.state_dict()
            for key in self.head_state():
                value = tensors[f"head.{key}"]
                if key in _PER_ITEM:
                    getattr(new.head, key)[to_rows] = value[from_rows].to(getattr(new.head, key).dtype)
                else:
                    state[key].copy_(value)
        if len(new._counts):
            moved = np.full(n_saved, -1, dtype=np.int64)  # each saved row's row here (-1: not in this catalog)
            moved[from_rows.numpy()] = to_rows.numpy()
            saved = {key[len("counts.") :]: v.numpy() for key, v in tensors.items() if key.startswith("counts.")}
            mapped = new._counts.remapped(saved, moved, n)  # ModelLoadError when the rows are inconsistent
            new._counts.restore(mapped, {name: {} for name, _ in new._counts.enabled}, n)
        new.trainer.steps = int(manifest.get("steps", 0))
        new.trainer.examples = int(manifest.get("examples", 0))
        name = manifest.get("version_name")
        new.version_name = str(name) if name is not None else None
        new._item_vectors()  # ready before the first request
        if self.config.head.text_feature and n <= TEXT_COSINES_MAX_ITEMS:
            new._cosines(n)
        elif self.config.head.text_feature:  # the same texts in the same rows: the moments carry over
            if self._text_moments.matches(self.head.item_text):
                new._text_moments = self._text_moments.copied_for(new.head.item_text)
            new._text_moments.update(new.head.item_text, n)
            if self.config.head.text_affinity:  # what _top_rows scans
                new._half_vectors(new._item_vectors())
        return new

    def adopt_head(self, blob: bytes, source: str = "snapshot") -> str | None:
        """Take an exported head's weights (a promoted snapshot) as this scorer's own, by item id, and anchor
        the L2 pull of the online updates at them; the count features, replay buffer and optimizer state stay.
        Checked as :meth:`with_head` checks (:class:`ModelLoadError`, ``self`` unchanged). Returns the blob's
        version name."""
        loaded = self.with_head(blob, source)
        n = len(self._item_ids)
        with torch.no_grad():
            mine = self.head.state_dict()
            for key, value in loaded.head.state_dict().items():
                if key in ("item_text", "item_counts"):  # texts are the same; the counts here are newer
                    continue
                if key in _PER_ITEM:
                    getattr(self.head, key)[:n] = value[:n]
                else:
                    mine[key].copy_(value)
        self.trainer.set_anchor()
        self._vectors = None
        return loaded.version_name

    def _check_compatible(self, manifest: Mapping[str, Any], source: str) -> None:
        if manifest.get("class") != type(self).__name__:
            raise ModelLoadError(f"{source} holds a {manifest.get('class')!r}, not a {type(self).__name__!r}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ModelLoadError(
                f"{source} has format_version {manifest.get('format_version')!r}; this ripplerec reads {FORMAT_VERSION}"
            )
        head = (manifest.get("config") or {}).get("head")
        if head != asdict(self.config.head):
            raise ModelLoadError(f"{source}: made for head config {head}, this scorer has {asdict(self.config.head)}")
        if self.config.head.uses_text and manifest.get("encoder_version") != self.encoder_version:
            raise ModelLoadError(
                f"{source}: made with encoder {manifest.get('encoder_version')!r}, this scorer encodes items with "
                f"{self.encoder_version!r}"
            )

    def checkpoint(self, extra: Mapping[str, Any] | None = None) -> bytes:
        """Everything a trainer needs to continue exactly where it stopped, as one safetensors blob.

        Head weights (item texts included), the anchor of the L2 pull, the optimizer state, the
        random generators, the replay reservoir, the active-item mask and the count features with their
        per-user windows; ``extra`` (JSON) rides along in the manifest. Per-user learning histories of
        :meth:`learn` are not kept: a trainer fed ready-made examples does not use them.
        """
        from safetensors.torch import save

        n = len(self._item_ids)
        tensors: dict[str, torch.Tensor] = {}
        per_item = set(_PER_ITEM) | {"item_text"}
        for key, value in self.head.state_dict().items():
            tensors[f"head.{key}"] = (value[:n] if key in per_item else value).detach().clone().contiguous()
        if not self.config.head.gated:  # not in the state dict then, but the gate of a later config may read it
            tensors["head.item_counts"] = self.head.item_counts[:n].clone().contiguous()
        for key, value in self.trainer.anchor.items():
            tensors[f"anchor.{key}"] = value.contiguous()
        params = dict(self.head.named_parameters())
        for name, param in params.items():
            for key, value in self.trainer.optimizer.state.get(param, {}).items():
                if torch.is_tensor(value):
                    rows = value[:n] if name in _PER_ITEM and value.dim() > 0 else value
                    tensors[f"opt.{name}.{key}"] = rows.detach().clone().contiguous()
        tensors["rng.trainer"] = self.trainer.generator.get_state()
        tensors["rng.head"] = self.head._generator.get_state()
        active = torch.zeros(n, dtype=torch.uint8)
        active[: min(n, self._active.shape[0])] = self._active[:n].to(torch.uint8)
        tensors["active"] = active
        replay_tensors, replay_meta = self.replay.state("replay.")
        tensors.update(replay_tensors)
        for key, value in self._counts.state(n).items():
            tensors[f"counts.{key}"] = torch.from_numpy(np.ascontiguousarray(value))
        manifest = {
            **self._manifest(),
            "format": CHECKPOINT_FORMAT,
            "item_ids": list(self._item_ids),
            "replay_seen": self.replay.seen,
            "replay": replay_meta,
            "count_recent": self._counts.recent(),
            "extra": dict(extra or {}),
        }
        return bytes(save(tensors, metadata={"manifest": json.dumps(manifest)}))

    @classmethod
    def restore(
        cls,
        blob: bytes,
        encoder: TextEncoder | None = None,
        cache: EmbeddingCache | None = None,
        source: str = "checkpoint",
    ) -> tuple[TransformerScorer, dict[str, Any]]:
        """A scorer rebuilt from :meth:`checkpoint`, and the ``extra`` saved with it.

        With ``encoder``, its version must be the one the checkpoint was made with.
        """
        from safetensors.torch import load

        manifest = _manifest_of(blob, source)
        if manifest.get("format") != CHECKPOINT_FORMAT:
            raise ModelLoadError(f"{source}: format {manifest.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        config = TransformerScorerConfig.from_dict(manifest["config"])
        saved_encoder = manifest.get("encoder_version")
        if encoder is not None and config.head.uses_text and encoder.version != saved_encoder:
            raise ModelLoadError(f"{source} was made with encoder {saved_encoder!r}, not {encoder.version!r}")
        try:
            tensors = load(blob)
        except Exception as error:
            raise ModelLoadError(f"{source}: unreadable tensors: {error}") from error
        scorer = cls(config, encoder, cache, manifest.get("name"))
        scorer.encoder_version = saved_encoder
        item_ids = [str(i) for i in manifest.get("item_ids", [])]
        n = len(item_ids)
        text = tensors.get("head.item_text")
        embeddings = text.numpy() if config.head.uses_text and text is not None else None
        scorer.add_items([Item(item_id, item_id) for item_id in item_ids], embeddings)
        per_item = set(_PER_ITEM) | {"item_text"}
        head = scorer.head
        with torch.no_grad():
            state = head.state_dict()
            for key, value in tensors.items():
                if not key.startswith("head."):
                    continue
                name = key[len("head.") :]
                if name in per_item:
                    getattr(head, name)[:n] = value
                elif name in state:
                    state[name].copy_(value)
        scorer.trainer.set_anchor({key[len("anchor.") :]: v for key, v in tensors.items() if key.startswith("anchor.")})
        params = dict(head.named_parameters())
        optimizer_state: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                name, _, field_name = key[len("opt.") :].rpartition(".")
                optimizer_state.setdefault(name, {})[field_name] = value
        for name, fields in optimizer_state.items():
            param = params.get(name)
            if param is None:
                raise ModelLoadError(f"{source}: optimizer state for unknown parameter {name!r}")
            restored = {}
            for field_name, value in fields.items():
                if name in _PER_ITEM and value.dim() > 0 and value.shape[0] < param.shape[0]:
                    pad = value.new_zeros((param.shape[0] - value.shape[0],) + tuple(value.shape[1:]))
                    value = torch.cat([value, pad])
                restored[field_name] = value
            scorer.trainer.optimizer.state[param] = restored
        scorer.trainer.generator.set_state(tensors["rng.trainer"])
        head._generator.set_state(tensors["rng.head"])
        scorer._active = tensors["active"].bool() if "active" in tensors else scorer._active
        replay_meta = dict(manifest.get("replay") or {})
        replay_meta.setdefault("seen", int(manifest.get("replay_seen", 0)))
        trainer_config = config.trainer  # the configured bounds, not what an older writer saved
        scorer.replay = ReplayBuffer.from_state(
            tensors, replay_meta, "replay.", capacity=trainer_config.replay_capacity,
            window=trainer_config.replay_window, max_bytes=trainer_config.replay_max_bytes,
        )
        if len(scorer._counts):
            arrays = {key[len("counts.") :]: v.numpy() for key, v in tensors.items() if key.startswith("counts.")}
            scorer._counts.restore(arrays, manifest.get("count_recent", {}), n)
        scorer.trainer.steps = int(manifest.get("steps", 0))
        scorer.trainer.examples = int(manifest.get("examples", 0))
        scorer._vectors = None
        return scorer, dict(manifest.get("extra") or {})


def _manifest_of(blob: bytes, source: str) -> dict[str, Any]:
    """The JSON manifest in a safetensors blob's metadata (:class:`ModelLoadError` when there is none)."""
    if len(blob) < 8:
        raise ModelLoadError(f"{source}: {len(blob)} bytes is not a safetensors blob")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > len(blob) - 8 or size > 100 * 1024 * 1024:
        raise ModelLoadError(f"{source}: not a safetensors blob (header of {size} bytes in {len(blob)})")
    try:
        header = json.loads(blob[8 : 8 + size])
        manifest = json.loads(header["__metadata__"]["manifest"])
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{source}: no ripplerec manifest in the safetensors header ({error})") from error
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"{source}: the manifest is not a JSON object")
    return manifest


class _TextMoments:
    """The sum and the sum of outer products (float64) of the first ``rows`` unit item texts, for the texts they
    were computed from: the mean and spread over the catalog of the cosines of any text profile ``p`` with
    every item text, ``p . sum / n`` and the root of ``p^T squares p / n - mean^2``, without those ``n`` cosines.
    """

    CHUNK = 4096  # rows normalised and multiplied at a time (float32 products, summed in float64)

    def __init__(self, dim: int) -> None:
        self.sum = np.zeros(dim)
        self.squares = np.zeros((dim, dim))
        self.rows = 0
        self._source: tuple[torch.Tensor, int] | None = None  # (item texts, their version) when computed

    def matches(self, texts: torch.Tensor) -> bool:
        """Whether these moments are of the first :attr:`rows` rows of ``texts`` as they are now."""
        return self._source is not None and self._source[0] is texts and self._source[1] == texts._version

    def follow(self, texts: torch.Tensor) -> None:
        """``texts`` hold the same first :attr:`rows` rows as the texts these moments were computed from (they
        grew, or rows after those were written)."""
        self._source = (texts, texts._version)

    def update(self, texts: torch.Tensor, n: int) -> _TextMoments:
        """These moments brought to the first ``n`` rows of the raw item texts ``texts`` (normalised here);
        from scratch when the texts changed otherwise than by :meth:`follow`."""
        if self.matches(texts) and self.rows == n:
            return self
        # new arrays, never changed in place: a scorer made by with_head shares them (copied_for)
        if self.matches(texts) and self.rows < n:
            total, squares, done = self.sum.copy(), self.squares.copy(), self.rows
        else:
            total, squares, done = np.zeros(texts.shape[1]), np.zeros((texts.shape[1], texts.shape[1])), 0
        source = (texts, texts._version)
        with torch.no_grad():
            for start in range(done, n, self.CHUNK):
                unit = nn.functional.normalize(texts[start : min(n, start + self.CHUNK)], dim=-1)
                total += unit.sum(dim=0, dtype=torch.float64).numpy()
                squares += (unit.T @ unit).numpy()
        self.sum, self.squares, self.rows, self._source = total, squares, n, source
        return self

    def copied_for(self, texts: torch.Tensor) -> _TextMoments:
        """These moments, for ``texts`` that hold the same first :attr:`rows` rows (a copy of the catalog)."""
        copy = _TextMoments(0)
        copy.sum, copy.squares, copy.rows = self.sum, self.squares, self.rows  # never changed in place
        copy.follow(texts)
        return copy

    def standardising(self, profiles: NDArray[np.float32], n: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """``(scale, offset)`` per profile ``(B,)``: the cosines ``c`` of each profile with the first ``n`` unit
        texts standardise to ``c * scale + offset``, as :func:`standardised` would; 0 and 0 where they are
        constant up to rounding (an empty profile).

        >>> moments = _TextMoments(2).update(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]), 3)
        >>> scale, offset = moments.standardising(np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32), 3)
        >>> (np.array([1.0, 0.0, 0.6]) * scale[0] + offset[0]).round(3).tolist()  # standardised([1.0, 0.0, 0.6])
        [1.136, -1.298, 0.162]
        >>> float(scale[1]), float(offset[1]) == 0.0
        (0.0, True)
        """
        p = profiles.astype(np.float64)
        mean = p @ self.sum / n
        second = np.einsum("bt,tu,bu->b", p, self.squares, p) / n
        spread = np.sqrt(np.maximum(second - mean * mean, 0.0))
        informative = spread > 1e-6 * (1.0 + np.abs(mean))  # standardised's test
        scale = np.where(informative, 1.0 / np.where(informative, spread, 1.0), 0.0)
        return scale.astype(np.float32), (-mean * scale).astype(np.float32)


class _EncodedHistory:
    """A user's last ``length`` encoded behaviours (row, action index, value or NaN, ts), oldest first, in a
    numpy buffer of twice that length: a snapshot is one slice copy (a deque of tuples is converted value by
    value, which was a tenth of a training step), and the buffer shifts once every ``length`` appends."""

    def __init__(self, length: int, behaviours: Sequence[tuple[int, int, float, float]] = ()) -> None:
        self._length = length
        self._buffer = np.zeros((2 * length, 4), dtype=np.float64)
        self._end = 0
        for behaviour in behaviours:
            self.append(behaviour)

    def __len__(self) -> int:
        return min(self._end, self._length)

    def append(self, behaviour: tuple[int, int, float, float]) -> None:
        if self._end == self._buffer.shape[0]:  # full: keep the last length - 1 at the front
            kept = self._length - 1
            self._buffer[:kept] = self._buffer[self._end - kept : self._end]
            self._end = kept
        self._buffer[self._end] = behaviour
        self._end += 1

    def snapshot(self) -> NDArray[np.float64]:
        """The behaviours as a ``(len(self), 4)`` array, a copy."""
        return self._buffer[self._end - len(self) : self._end].copy()
