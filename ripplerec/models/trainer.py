"""Online training of a :class:`~ripplerec.models.head.Head`: mini-batches, sampled negatives, AdamW,
and an L2 pull toward anchor weights (the last snapshot) so online updates do not wander off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ripplerec.models.head import Head, HistoryBatch

__all__ = ["TrainerConfig", "OnlineTrainer"]

LOSSES = ("softmax", "bpr")


@dataclass(frozen=True)
class TrainerConfig:
    """Optimisation knobs (saved beside the weights with the head config).

    ``loss``: ``softmax`` (sampled softmax; the full catalog when it has at most ``full_softmax_max``
    items) or ``bpr`` (pairwise, ``negatives`` uniform negatives per positive).
    ``anchor_l2``: strength of the pull toward the anchor weights (:meth:`OnlineTrainer.set_anchor`).
    ``mask_history``: leave the user's own recent items out of the negatives (they are not recommended).
    ``active_negatives``: items never interacted with are left out of the negatives, so a new item is not
    pushed down before anyone has seen it (its bias stays at its initial value until it is used).
    ``replay``: each mini-batch also trains on that many examples drawn uniformly from a reservoir of past
    examples, so one pass over a stream still revisits it (and early data is not forgotten).
    ``replay_capacity``, ``replay_window``, ``replay_max_bytes``: the bounds of that
    :class:`~ripplerec.models.replay_buffer.ReplayBuffer`.
    """

    lr: float = 3e-3
    weight_decay: float = 0.0
    loss: str = "softmax"
    negatives: int = 512
    full_softmax_max: int = 20_000
    anchor_l2: float = 1e-5
    batch_size: int = 256
    steps_per_batch: int = 1
    active_negatives: bool = False  # negatives only among items that have had an interaction
    replay: int = 512  # past examples mixed into every mini-batch (0: none)
    replay_capacity: int = 20_000  # past examples kept for replay (a reservoir over the whole stream)
    replay_window: int = 2_000  # the most recent examples, kept beside the reservoir (a fine-tune's held-out window)
    replay_max_bytes: int = 256 * 1024 * 1024  # both together hold at most this many bytes of histories
    mask_history: bool = True
    grad_clip: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}")
        if self.lr <= 0 or self.weight_decay < 0 or self.anchor_l2 < 0 or self.grad_clip <= 0:
            raise ValueError("lr and grad_clip must be > 0; weight_decay and anchor_l2 >= 0")
        for name in ("negatives", "full_softmax_max", "batch_size", "steps_per_batch", "replay_capacity",
                     "replay_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.replay < 0 or self.replay_window < 0:
            raise ValueError("replay and replay_window must be >= 0")


class OnlineTrainer:
    """Owns the optimizer of a head and takes one or more steps per mini-batch of examples."""

    def __init__(self, head: Head, config: TrainerConfig | None = None) -> None:
        self.head = head
        self.config = config or TrainerConfig()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        # fused: one kernel for all parameters' updates, where the default loops over them in Python on CPU
        self.optimizer = torch.optim.AdamW(
            head.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay, fused=True
        )
        self.steps = 0
        self.examples = 0
        self.anchor: dict[str, torch.Tensor] = {}
        self.set_anchor()

    def set_anchor(self, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Pull toward ``weights`` (a snapshot's dense head weights) from now on; default: current weights.

        This is the seam for snapshot fine-tuning: after a snapshot is promoted, call it with the
        snapshot's head weights.
        """
        dense = self.head.dense_parameters()
        source = weights if weights is not None else {name: p.detach() for name, p in dense.items()}
        missing = set(dense) - set(source)
        if missing:
            raise ValueError(f"anchor lacks {sorted(missing)}")
        self.anchor = {name: source[name].detach().clone() for name in dense}

    def grow(self, capacity: int) -> None:
        """Grow the head's item tables, carrying the optimizer state of the grown parameters along."""
        replaced = self.head.grow(capacity)
        if not replaced:
            return
        groups = self.optimizer.param_groups[0]
        groups["params"] = [replaced.get(p, p) for p in groups["params"]]
        for old, new in replaced.items():
            state = self.optimizer.state.pop(old, None)
            if not state:
                continue
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == old.shape:
                    pad = value.new_zeros((new.shape[0] - old.shape[0],) + tuple(value.shape[1:]))
                    state[key] = torch.cat([value, pad])
            self.optimizer.state[new] = state

    def step(
        self,
        history: HistoryBatch,
        positives: torch.Tensor,
        n_items: int,
        active: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        text_cosines: torch.Tensor | None = None,
    ) -> float:
        """Train on one mini-batch: ``positives`` (B,) are catalog rows; returns the last loss.

        ``active``: bool mask over the catalog of items that may serve as negatives (all when None).
        ``features``: ``(m, K, n_items)`` count features of the first ``m <= B`` examples, for a head with
        count features (the other examples have none, as if their features were zeros).
        ``text_cosines``: cosines of the item texts with each other (at least ``(n_items, n_items)``), for a
        head with ``text_affinity``: the full-catalog loss then scores the affinity from them
        (:meth:`Head.affinity_scores`), the same figures with less work.
        """
        self.head.train()
        loss_value = 0.0
        for _ in range(self.config.steps_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(history, positives, n_items, active, features, text_cosines)
            if self.config.anchor_l2 > 0 and self.anchor:
                pull = sum(((p - self.anchor[name]) ** 2).sum() for name, p in self.head.dense_parameters().items())
                loss = loss + self.config.anchor_l2 * pull
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(self.head.parameters(), self.config.grad_clip)
            self.optimizer.step()
            loss_value = float(loss.detach())
            self.steps += 1
        self.examples += int(positives.shape[0])
        self.head.eval()
        return loss_value

    def _loss(
        self,
        history: HistoryBatch,
        positives: torch.Tensor,
        n_items: int,
        active: torch.Tensor | None,
        features: torch.Tensor | None,
        text_cosines: torch.Tensor | None = None,
    ) -> torch.Tensor:
        head = self.head
        config = self.config
        batch = positives.shape[0]
        if config.loss == "softmax" and n_items <= config.full_softmax_max:
            catalog = slice(0, n_items)
            # with the cosines, the text affinity is scored apart from the user and item vectors
            cosines = text_cosines if head.affinity_scale is not None else None
            vectors = head.item_vectors(catalog, affinity=cosines is None)
            users, weights = head.user_vectors(history, vectors, affinity=cosines is None)
            # the (B, n) terms are added in place (no backward pass keeps the sums), not into a new tensor each
            logits = head.scores(users, vectors)
            if cosines is not None:
                logits.add_(head.affinity_scores(history, weights, cosines, n_items))
            logits.add_(head.biases(catalog))
            if features is not None:
                logits.add_(_padded(head.feature_scores(features[:, :, :n_items]), batch))
            blocked = None  # one mask for both reasons, so the (B, n) logits are filled once
            if config.mask_history:
                blocked = torch.zeros(batch, n_items, dtype=torch.bool)
                owners = torch.arange(batch).unsqueeze(1).expand_as(history.items)
                blocked[owners[history.mask], history.items[history.mask]] = True
                blocked[torch.arange(batch), positives] = False
            if active is not None:
                inactive = ~active[:n_items].unsqueeze(0)
                blocked = inactive if blocked is None else blocked.logical_or_(inactive)
            if blocked is not None:
                # A blocked logit's softmax is exactly 0 (exp(-1e9) underflows), so the loss's gradient there is
                # exactly 0, what masked_fill's backward pass would write: filled outside autograd, that (B, n)
                # pass is skipped. Unless a positive is blocked: its row's softmax then does reach blocked logits.
                positive_blocked = bool(blocked.expand(batch, n_items)[torch.arange(batch), positives].any())
                with torch.set_grad_enabled(positive_blocked and torch.is_grad_enabled()):
                    logits.masked_fill_(blocked, -1e9)
            return nn.functional.cross_entropy(logits, positives)
        if active is not None and bool(active[:n_items].any()):
            pool = torch.nonzero(active[:n_items]).squeeze(1)
            negatives = pool[torch.randint(0, pool.shape[0], (config.negatives,), generator=self.generator)]
        else:
            negatives = torch.randint(0, n_items, (config.negatives,), generator=self.generator)
        # item vectors once per distinct row (histories repeat items a lot), then gathered
        rows = torch.cat([positives, negatives, history.items.flatten()])
        distinct, inverse = torch.unique(rows, return_inverse=True)
        vectors = head.item_vectors(distinct)
        n_sampled = batch + negatives.shape[0]
        local = history._replace(items=inverse[n_sampled:].view_as(history.items))
        users, _ = head.user_vectors(local, vectors)
        sampled = vectors[inverse[:n_sampled]]
        positive_scores = (users * sampled[:batch]).sum(-1) + head.biases(positives)
        negative_scores = head.scores(users, sampled[batch:]) + head.biases(negatives)  # (B, N)
        if features is not None:
            featured = features.shape[0]
            mine = features[torch.arange(featured), :, positives[:featured]].unsqueeze(-1)  # (m, K, 1)
            positive_scores = positive_scores + _padded(head.feature_scores(mine)[:, 0], batch)
            negative_scores = negative_scores + _padded(head.feature_scores(features[:, :, negatives]), batch)
        # a sampled negative that is the positive itself is not a negative
        negative_scores = negative_scores.masked_fill(negatives.unsqueeze(0) == positives.unsqueeze(1), -1e9)
        if config.loss == "bpr":
            return -nn.functional.logsigmoid(positive_scores.unsqueeze(1) - negative_scores).mean()
        logits = torch.cat([positive_scores.unsqueeze(1), negative_scores], dim=1)
        return nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long))


def _padded(scores: torch.Tensor, rows: int) -> torch.Tensor:
    """``scores`` of the first examples of a batch, with zero rows below for the rest (``rows`` in all)."""
    if scores.shape[0] == rows:
        return scores
    return nn.functional.pad(scores, (0, 0) * (scores.dim() - 1) + (0, rows - scores.shape[0]))
