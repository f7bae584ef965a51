"""The lightweight, online part of the model: user tower, item adapter and growing item biases.

A user vector is an attention pooling over the user's last L behaviours; each behaviour is its item's
vector plus embeddings of its action, rating value, recency (log-scaled age) and position. The score of
an item is ``user_vector . item_vector + item_bias``, so ranking the whole catalog is one matrix product.
Item vectors come from the item's text embedding through an adapter (``text``), from a learned id
embedding (``id``, the ID-only baseline), or both (``text+id``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ripplerec.models.base import ACTIONS

__all__ = ["HeadConfig", "Head", "HistoryBatch", "RECENCY_BUCKETS", "VALUE_BUCKETS", "recency_bucket"]

RECENCY_BUCKETS = 40  # log2 of age in seconds: 2**39 s is beyond any history
VALUE_BUCKETS = 12  # 0: no value; 1..11: value rounded and clipped to 0..10
ITEM_REPRESENTATIONS = ("text", "id", "text+id")
Rows = torch.Tensor | slice | None  # catalog rows: an index tensor, a slice, or None for all of them


def recency_bucket(age_seconds: float) -> int:
    """Log-scaled age bucket.

    >>> recency_bucket(0.0), recency_bucket(1.0), recency_bucket(3600.0)
    (0, 1, 11)
    """
    if not age_seconds > 0.0:  # also catches NaN
        return 0
    return min(int(math.log2(1.0 + age_seconds)), RECENCY_BUCKETS - 1)


def value_bucket(value: float | None) -> int:
    if value is None or value != value:
        return 0
    return 1 + min(max(int(round(value)), 0), VALUE_BUCKETS - 2)


@dataclass(frozen=True)
class HeadConfig:
    """Architecture of the head (saved as JSON beside its weights)."""

    text_dim: int = 384  # encoder output size; unused for item_representation == "id"
    dim: int = 64
    history_length: int = 50
    heads: int = 2
    item_representation: str = "text+id"
    tower_hidden: int = 128
    additive_attention: bool = True  # tanh(W h) . q scores; False: plain h . q (cheaper)
    normalize: bool = False  # cosine scores times a learned scale, instead of plain dot products
    # text+id only: the id embedding of an item with n interactions is scaled by n / (n + id_gate), so a
    # cold item is scored by its text while its id embedding is still mostly noise (0: no gate)
    id_gate: float = 0.0
    bias_gate: bool = False  # with id_gate: the item bias is scaled by the same factor
    # text only: add a learned multiple of cos(item text, attention-weighted mean text of the history)
    text_affinity: bool = False
    # count features kept online by the scorer and added to the score with learned weights (a hybrid head):
    # item-kNN co-occurrence and item transitions from the user's recent items (see models.count_features)
    cooccurrence_feature: bool = False
    transition_feature: bool = False
    # text only, with the count features: cosine of the item's text with the user's last items' texts
    # (recency-weighted), standardised like them; it reaches items that have no counts yet
    text_feature: bool = False
    text_feature_init: float = 1.0  # its starting weight
    # starting weight of each standardised feature; the softmax loss pulls the weights down slowly, though
    # heavier weights rank better (docs/experiments.md, "Model accuracy")
    feature_weight_init: float = 2.0

    def __post_init__(self) -> None:
        if self.item_representation not in ITEM_REPRESENTATIONS:
            raise ValueError(f"item_representation must be one of {ITEM_REPRESENTATIONS}")
        if self.item_representation != "id" and self.text_dim < 1:
            raise ValueError("text_dim must be >= 1 when items are represented by text")
        for name in ("dim", "history_length", "heads", "tower_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.id_gate < 0:
            raise ValueError("id_gate must be >= 0")
        if self.id_gate and self.item_representation != "text+id":
            raise ValueError("id_gate needs item_representation 'text+id'")
        if (self.text_affinity or self.text_feature) and not self.uses_text:
            raise ValueError("text_affinity and text_feature need text item representations")

    @property
    def count_features(self) -> int:
        return int(self.cooccurrence_feature) + int(self.transition_feature) + int(self.text_feature)

    @property
    def gated(self) -> bool:
        return self.id_gate > 0

    @property
    def uses_text(self) -> bool:
        return self.item_representation in ("text", "text+id")

    @property
    def uses_ids(self) -> bool:
        return self.item_representation in ("id", "text+id")


class HistoryBatch(NamedTuple):
    """Behaviours of a batch of users as tensors, shape ``(B, L)``; ``mask`` is True where a slot is used."""

    items: torch.Tensor  # long, catalog row (0 where masked)
    actions: torch.Tensor  # long
    values: torch.Tensor  # long, value bucket
    recency: torch.Tensor  # long, recency bucket
    mask: torch.Tensor  # bool


class Head(nn.Module):
    """User tower + item adapter + item biases; the item tables grow with :meth:`grow`."""

    def __init__(self, config: HeadConfig, capacity: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        # new items' id embeddings are drawn from this, so growth is reproducible
        self._generator = torch.Generator().manual_seed(seed)
        d = config.dim
        self.item_text: torch.Tensor
        self.register_buffer("item_text", torch.zeros(capacity, config.text_dim if config.uses_text else 0))
        # ((item_text, its version, n), its first n rows normalised): see unit_texts
        self._unit_texts: tuple[tuple[torch.Tensor, int, int], torch.Tensor] | None = None
        self.adapter = nn.Linear(config.text_dim, d) if config.uses_text else None
        self.item_ids = (
            nn.Parameter(torch.randn(capacity, d, generator=self._generator) * 0.05) if config.uses_ids else None
        )
        self.item_bias = nn.Parameter(torch.zeros(capacity))
        self.item_counts: torch.Tensor  # interactions learned per item (used by the id gate)
        # saved only when the gate reads it, so heads without a gate keep their saved format
        self.register_buffer("item_counts", torch.zeros(capacity), persistent=config.gated)
        self.affinity_scale = nn.Parameter(torch.tensor(1.0)) if config.text_affinity else None
        initial = torch.full((config.count_features,), config.feature_weight_init)
        if config.text_feature:  # the text feature comes last
            initial[-1] = config.text_feature_init
        self.feature_weights = nn.Parameter(initial) if config.count_features else None
        self.action = nn.Embedding(len(ACTIONS), d)
        self.value = nn.Embedding(VALUE_BUCKETS, d)
        self.recency = nn.Embedding(RECENCY_BUCKETS, d)
        self.position = nn.Embedding(config.history_length, d)
        for table in (self.action, self.value, self.recency, self.position):
            nn.init.normal_(table.weight, std=0.02)
        self.history_norm = nn.LayerNorm(d)
        self.attention_key = nn.Linear(d, d) if config.additive_attention else None
        self.attention_query = nn.Parameter(torch.randn(config.heads, d) * 0.1)
        # a learned bias per (head, distance from the most recent behaviour): head 0 starts uniform, the
        # others start recency-focused, so sequential signals are found quickly
        slopes = torch.tensor([0.0] + [0.5**h for h in range(config.heads - 1)])
        distance = torch.arange(config.history_length, dtype=torch.float32)
        self.position_bias = nn.Parameter(-slopes[:, None] * distance[None, :])
        self.attention_value = nn.Linear(d * config.heads, d)
        self.scale = nn.Parameter(torch.tensor(10.0 if config.normalize else 1.0))
        self.tower = nn.Sequential(nn.Linear(d, config.tower_hidden), nn.GELU(), nn.Linear(config.tower_hidden, d))

    @property
    def capacity(self) -> int:
        return int(self.item_bias.shape[0])

    def grow(self, capacity: int) -> dict[nn.Parameter, nn.Parameter]:
        """Make room for ``capacity`` items; returns old -> new parameters for optimizer state transfer."""
        if capacity <= self.capacity:
            return {}
        extra = capacity - self.capacity
        replaced: dict[nn.Parameter, nn.Parameter] = {}
        with torch.no_grad():
            self.item_text = torch.cat([self.item_text, self.item_text.new_zeros(extra, self.item_text.shape[1])])
            self.item_counts = torch.cat([self.item_counts, self.item_counts.new_zeros(extra)])
            old_bias = self.item_bias
            self.item_bias = nn.Parameter(torch.cat([old_bias.data, old_bias.data.new_zeros(extra)]))
            replaced[old_bias] = self.item_bias
            if self.item_ids is not None:
                old_ids = self.item_ids
                fresh = torch.randn(extra, self.config.dim, generator=self._generator, dtype=old_ids.dtype) * 0.05
                self.item_ids = nn.Parameter(torch.cat([old_ids.data, fresh.to(old_ids.device)]))
                replaced[old_ids] = self.item_ids
        return replaced

    def dense_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters shared by all items and users (the ones pulled toward the anchor)."""
        return {name: p for name, p in self.named_parameters() if not name.startswith(("item_bias", "item_ids"))}

    def gate(self, rows: Rows = None) -> torch.Tensor | None:
        """n / (n + id_gate) per item (None without a gate)."""
        if not self.config.gated:
            return None
        counts = self.item_counts if rows is None else self.item_counts[rows]
        return counts / (counts + self.config.id_gate)

    def biases(self, rows: Rows) -> torch.Tensor:
        """Item biases of catalog ``rows`` (gated with ``bias_gate``)."""
        bias = self.item_bias if rows is None else self.item_bias[rows]
        gate = self.gate(rows) if self.config.bias_gate else None
        return bias if gate is None else bias * gate

    def item_vectors(self, rows: Rows = None, affinity: bool = True) -> torch.Tensor:
        """Item vectors for catalog ``rows`` (all rows when None; a slice such as ``slice(0, n)`` is a view,
        where an index tensor copies).

        With ``text_affinity`` the normalised text embedding is appended (``dim + text_dim`` columns); the
        user vectors carry the matching columns, so scores stay one matrix product. ``affinity=False`` leaves
        them out (the text affinity is then scored apart, by :meth:`affinity_scores`).
        """
        parts = []
        if self.adapter is not None:
            text = self.item_text if rows is None else self.item_text[rows]
            parts.append(self.adapter(text))
        if self.item_ids is not None:
            ids = self.item_ids if rows is None else self.item_ids[rows]
            gate = self.gate(rows)
            parts.append(ids if gate is None else ids * gate.unsqueeze(-1))
        vectors = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        if self.config.normalize:
            vectors = nn.functional.normalize(vectors, dim=-1)
        if self.affinity_scale is not None and affinity:
            text = self.item_text if rows is None else self.item_text[rows]
            vectors = torch.cat([vectors, nn.functional.normalize(text, dim=-1)], dim=-1)
        return vectors

    def user_vectors(
        self, history: HistoryBatch, item_vectors: torch.Tensor | None = None, affinity: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """User vectors ``(B, d)`` and attention weights ``(B, L)`` (mean over heads).

        ``item_vectors``: precomputed :meth:`item_vectors` for the whole catalog, to save work.
        ``affinity=False``: without the text-affinity columns (see :meth:`affinity_scores`).
        """
        batch, length = history.items.shape
        d = self.config.dim
        if item_vectors is None:  # the vectors of the history's own rows
            learned = self.item_vectors(history.items.flatten())[:, :d]
            item_index = torch.arange(batch * length, device=learned.device).view(batch, length)
        else:  # only the learned columns: the gradient of the gather is then (n, d), not (B, L, width)
            learned = item_vectors if item_vectors.shape[1] == d else item_vectors[:, :d]
            item_index = history.items
        positions = torch.arange(length, device=learned.device).flip(0)  # 0 = most recent slot
        distance = positions.clamp(max=self.config.history_length - 1)
        behaviour = self.history_norm(self._behaviours(history, learned, item_index, distance))
        logits = self._attention_logits(behaviour).transpose(1, 2)  # (B, heads, L)
        logits = logits + self.position_bias[:, distance].unsqueeze(0)
        logits = logits.masked_fill(~history.mask.unsqueeze(1), -1e9)
        weights = torch.softmax(logits, dim=-1) * history.mask.unsqueeze(1)  # empty history -> zeros
        pooled = torch.bmm(weights, behaviour).reshape(batch, -1)
        pooled = self.attention_value(pooled)
        users = pooled + self.tower(pooled)
        if self.config.normalize:
            users = nn.functional.normalize(users, dim=-1) * self.scale
        mean_weights = weights.mean(dim=1)
        if self.affinity_scale is not None and affinity:
            profile = nn.functional.normalize(self._text_profile(history, mean_weights, item_vectors), dim=-1)
            users = torch.cat([users, self.affinity_scale * profile], dim=-1)
        return users, mean_weights

    def _attention_logits(self, behaviour: torch.Tensor) -> torch.Tensor:
        """Attention logits ``(B, L, heads)``: ``tanh(W h + b) . q`` (additive), else ``h . q``.

        Each as one product (einsum's batched form is 3x slower here). In training, ``tanh(z)`` is computed as
        ``2 sigmoid(2z) - 1``, with the doubling folded into ``W``, ``b`` and ``q`` (exact in floating point):
        torch's CPU ``tanh`` takes six times as long as its ``sigmoid``. Without gradients (scoring a few
        users), ``tanh`` itself: there the folding's small operations cost more than they save.
        """
        query = self.attention_query
        if self.attention_key is None:
            return nn.functional.linear(behaviour, query)
        key = self.attention_key
        if not torch.is_grad_enabled():
            return nn.functional.linear(torch.tanh(key(behaviour)), query)
        # linear's own product on the flattened slots, so the sigmoid can overwrite it (its backward keeps
        # only its inputs, where an in-place sigmoid on linear's (B, L, d) view would copy the gradient back)
        flat = behaviour.reshape(-1, behaviour.shape[-1])
        gates = torch.addmm(2.0 * key.bias, flat, (2.0 * key.weight).t()).sigmoid_()
        return nn.functional.linear(gates, 2.0 * query, -query.sum(dim=-1)).view(*behaviour.shape[:-1], -1)

    def _behaviours(
        self, history: HistoryBatch, learned: torch.Tensor, item_index: torch.Tensor, distance: torch.Tensor
    ) -> torch.Tensor:
        """Each slot's item vector (row ``item_index`` of ``learned``) plus its action, value, recency and
        position embeddings, ``(B, L, d)``.

        One ``embedding_bag`` over the stacked tables adds the five rows in that order, in one pass: the
        same sums as five gathers and four additions, without their intermediate tensors and gradients
        (see :class:`_SummedRows` for the backward pass).
        """
        if item_index.numel() < learned.shape[0]:  # fewer slots than items (scoring a few users): stack their rows
            learned = learned[item_index.reshape(-1)]
            item_index = torch.arange(item_index.numel(), device=learned.device).view_as(item_index)
        tables = [learned, self.action.weight, self.value.weight, self.recency.weight, self.position.weight]
        offsets = [0]
        for table in tables[:-1]:
            offsets.append(offsets[-1] + table.shape[0])
        slots = torch.stack(
            [
                item_index,
                history.actions + offsets[1],
                history.values + offsets[2],
                history.recency + offsets[3],
                (distance + offsets[4]).expand_as(item_index),
            ],
            dim=-1,
        )
        table, bags = torch.cat(tables), slots.view(-1, len(tables))
        if table.requires_grad:  # training: the faster backward pass
            summed = _SummedRows.apply(table, bags)
        else:  # scoring: the bag alone (a custom function's own overhead is a tenth of scoring one user)
            summed = nn.functional.embedding_bag(bags, table, mode="sum")
        return summed.view(*item_index.shape, -1)

    def _text_profile(
        self, history: HistoryBatch, weights: torch.Tensor, item_vectors: torch.Tensor | None
    ) -> torch.Tensor:
        """``weights``-weighted sum of the history's normalised item texts ``(B, text_dim)``.

        The texts are fixed, so only ``weights`` gets a gradient. With the catalog's ``item_vectors`` and more
        slots than items (training), the sum is an ``embedding_bag``, which never materialises the
        ``(B, L, text_dim)`` gather; with fewer (scoring a few users), gathering is cheaper than copying the
        catalog's text columns into the table ``embedding_bag`` needs.
        """
        if item_vectors is None:
            texts = nn.functional.normalize(self.item_text[history.items], dim=-1)
        elif history.items.numel() < item_vectors.shape[0]:
            texts = item_vectors[:, self.config.dim :].detach()[history.items]
        else:
            table = item_vectors[:, self.config.dim :].detach().contiguous()
            return nn.functional.embedding_bag(history.items, table, per_sample_weights=weights, mode="sum")
        return torch.einsum("bl,blt->bt", weights, texts)

    def scores(self, users: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """``users @ vectors.T`` for :meth:`user_vectors` ``(B, width)`` and :meth:`item_vectors` ``(n, width)``.

        The text columns of ``text_affinity`` are fixed (normalised item texts), so no gradient is computed
        for them: with ``text_affinity`` that saves a third of the training step's largest product.
        """
        d = self.config.dim
        if self.affinity_scale is None or vectors.shape[1] == d:  # no text columns (or left out)
            return users @ vectors.T
        return users[:, :d] @ vectors[:, :d].T + users[:, d:] @ vectors[:, d:].detach().T

    def affinity_scores(
        self, history: HistoryBatch, weights: torch.Tensor, cosines: torch.Tensor, n: int
    ) -> torch.Tensor:
        """The text-affinity part of the scores of the first ``n`` items ``(B, n)``, from the cosines of the
        item texts with each other.

        ``affinity_scale * cos(u_i, p)`` with ``p = sum_l w_l u_{h_l}`` (unit texts ``u``, the history's
        rows ``h`` and attention ``weights`` ``w``), which is ``affinity_scale * sum_l w_l C[h_l, i] / |p|``
        for the cosine matrix ``C = U U^T``: a weighted sum of ``L`` rows of ``C`` per user, where the
        user-vector columns cost a ``text_dim``-wide product. ``cosines`` holds ``C`` for at least the first
        ``n`` items (what lies beyond is ignored); ``weights`` are :meth:`user_vectors`' attention weights.
        Gradients are those of the user-vector columns (see :class:`_CosineRows`).
        """
        if self.affinity_scale is None:
            raise ValueError("this head has no text affinity")
        texts = self.unit_texts(n)
        profile = nn.functional.embedding_bag(history.items, texts, per_sample_weights=weights, mode="sum")
        dots = _CosineRows.apply(profile, texts, history.items, weights.detach(), cosines)
        # nn.functional.normalize's divisor, applied to the (B, n) dot products instead of the profile
        return dots * (self.affinity_scale / profile.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def unit_texts(self, n: int) -> torch.Tensor:
        """The first ``n`` item texts, normalised ``(n, text_dim)``.

        Kept between calls (every training step reads them) until ``item_text`` changes: :meth:`grow`
        replaces it and writes into it bump its version counter.
        """
        source = (self.item_text, self.item_text._version, n)
        kept = self._unit_texts
        if kept is None or kept[0][0] is not source[0] or kept[0][1:] != source[1:]:
            with torch.no_grad():
                kept = self._unit_texts = (source, nn.functional.normalize(self.item_text[:n], dim=-1))
        return kept[1]

    def feature_scores(self, features: torch.Tensor) -> torch.Tensor:
        """The count features' part of the scores: ``(B, K, n)`` standardised features -> ``(B, n)``."""
        if self.feature_weights is None:
            raise ValueError("this head has no count features")
        # a sum over the few features: einsum would first copy the (B, K, n) features into another layout
        weights = self.feature_weights
        scores = features[:, 0] * weights[0]
        for k in range(1, features.shape[1]):
            scores.add_(features[:, k] * weights[k])  # in place: no backward pass keeps the partial sums
        return scores

    def forward(self, history: HistoryBatch) -> torch.Tensor:
        """Scores of the whole catalog for each user, ``(B, capacity)``."""
        vectors = self.item_vectors()
        users, _ = self.user_vectors(history, vectors)
        return users @ vectors.T + self.biases(None)


class _SummedRows(torch.autograd.Function):
    """``embedding_bag(slots, table, mode="sum")`` (each row of ``slots`` sums that many rows of ``table``),
    whose gradient is one ``index_add_`` per column of ``slots``: 4x faster on CPU than the bag's own
    backward pass, which sorts all the indices first."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, table: torch.Tensor, slots: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(slots)
        ctx.rows = table.shape[0]  # type: ignore[attr-defined]
        return nn.functional.embedding_bag(slots, table, mode="sum")

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        (slots,) = ctx.saved_tensors  # type: ignore[attr-defined]
        grad = grad.contiguous()
        table_grad = grad.new_zeros(ctx.rows, grad.shape[1])  # type: ignore[attr-defined]
        for column in range(slots.shape[1]):
            table_grad.index_add_(0, slots[:, column], grad)
        return table_grad, None


class _CosineRows(torch.autograd.Function):
    """``profile @ texts.T`` for ``profile = embedding_bag(items, texts, weights)``, computed forward as the
    ``weights``-weighted sum of the ``items``' rows of ``cosines = texts @ texts.T`` (``L`` rows of ``n``
    per user instead of a ``(B, text_dim) x (text_dim, n)`` product).

    The gradient is that of the product: ``grad @ texts`` reaches ``profile`` (and through it the weights);
    the same gradient as the cosine rows' own (``grad . C[h_l]`` per slot), whose per-slot dot products
    torch computes far more slowly than this one product.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        profile: torch.Tensor,
        texts: torch.Tensor,
        items: torch.Tensor,
        weights: torch.Tensor,
        cosines: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(texts)
        n = texts.shape[0]
        # whole rows of the kept matrix (it may be wider than n): a column slice would be copied on every call
        table = cosines if cosines.is_contiguous() else cosines.contiguous()
        summed = nn.functional.embedding_bag(items, table, per_sample_weights=weights, mode="sum")
        return summed if summed.shape[1] == n else summed[:, :n]

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        (texts,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad @ texts, None, None, None, None
