"""Fine-tune snapshots: retrain a scorer on its replay buffer so the online head does not forget.

:func:`fine_tune` takes a trained :class:`~ripplerec.models.transformer_scorer.TransformerScorer` (a
trainer's, restored from its checkpoint), holds out the most recent examples of its replay buffer,
and trains a copy on the rest for several epochs with AdamW, keeping the epoch that ranks the held-out
examples best (early stopping). Three modes:

* ``head``: the whole head, the text encoder frozen (the item texts as they are);
* ``lora``: LoRA adapters on the text encoder through ``peft`` (BERT's ``query``/``value`` by default)
  plus the head. Each step re-encodes the batch's positives with the adapted encoder, with gradients;
  at the end the whole catalog is re-encoded with it (batched, through the embedding cache, keyed by
  the adapter's version);
* ``full``: every encoder weight, with a smaller learning rate.

Nothing here does I/O but :class:`AdaptedEncoder`'s ``save``/``load`` of the adapter (peft's
``save_pretrained``/``PeftModel.from_pretrained``); snapshots on disk are
:mod:`ripplerec.models.snapshots`. Runs on CUDA when the encoder does.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from ripplerec.models.base import ModelLoadError
from ripplerec.models.embedding_cache import EmbeddingCache
from ripplerec.models.encoder import TransformerEncoder
from ripplerec.models.replay_buffer import ReplayExample
from ripplerec.models.transformer_scorer import LearnReport, TransformerScorer

__all__ = ["FineTuneConfig", "FineTuneResult", "AdaptedEncoder", "fine_tune", "holdout_ndcg", "split_replay",
           "MODES"]

MODES = ("head", "lora", "full")


@dataclass(frozen=True)
class FineTuneConfig:
    """How a snapshot is fine-tuned (saved in its manifest).

    ``holdout``: the share of the replay buffer's most recent examples held out (at most
    ``holdout_max``); ``patience``: epochs without a better held-out NDCG@10 before stopping;
    ``max_minutes``: the time budget (training stops after the epoch that crosses it; the best epoch so
    far is kept). ``encoder_lr``: the encoder's learning rate (LoRA adapters or every weight);
    ``encoder_items``: positives re-encoded with gradients per step (``lora``/``full``).
    """

    mode: str = "head"
    epochs: int = 6
    lr: float = 1e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 256
    holdout: float = 0.2
    holdout_max: int = 2_000
    patience: int = 2
    max_minutes: float = 5.0
    encoder_items: int = 64
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("query", "value")
    seed: int = 0
    keep_best: bool = True  # False: keep the last epoch's weights (the gate still compares them)
    # False: keep the best fine-tuned epoch even when the serving weights rank the held-out window better
    # (they learned it online); a shadow window after the snapshot judges it (models/shadow_gate.py)
    keep_serving: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.encoder_items < 1 or self.lora_r < 1:
            raise ValueError("epochs, batch_size, patience, encoder_items and lora_r must be >= 1")
        if not 0.0 < self.holdout < 1.0 or self.holdout_max < 1:
            raise ValueError("holdout must be in (0, 1) and holdout_max >= 1")
        if self.lr <= 0 or self.encoder_lr <= 0 or self.max_minutes <= 0 or self.weight_decay < 0:
            raise ValueError("lr, encoder_lr and max_minutes must be > 0, weight_decay >= 0")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lora_targets"] = list(self.lora_targets)
        return out


@dataclass
class FineTuneResult:
    """A fine-tuned scorer and how it compares with the one it started from on the held-out window."""

    scorer: TransformerScorer
    config: FineTuneConfig
    metrics: dict[str, float] = field(default_factory=dict)
    window: dict[str, float] = field(default_factory=dict)  # the data: ts range, examples trained and held out
    encoder: AdaptedEncoder | None = None  # lora/full: the adapted encoder the scorer's item texts come from

    @property
    def improved(self) -> bool:
        """The gate: the snapshot ranks the held-out window better than the model it started from."""
        return self.metrics.get("ndcg@10", 0.0) > self.metrics.get("serving_ndcg@10", 0.0)


class AdaptedEncoder:
    """A :class:`TransformerEncoder` whose model carries a ``peft`` LoRA adapter (``lora``) or fine-tuned
    weights (``full``); its ``version`` names the base and the adapter's content, so the embedding cache
    keeps its vectors apart from the base model's."""

    def __init__(self, base: TransformerEncoder, model: Any, mode: str, adapter_config: Mapping[str, Any]) -> None:
        self.base = base
        self.model = model
        self.mode = mode
        self.adapter_config = dict(adapter_config)
        self.tokenizer = base.tokenizer
        self.device = base.device
        self._version: str | None = None

    @classmethod
    def lora(cls, base: TransformerEncoder, config: FineTuneConfig) -> AdaptedEncoder:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_targets), bias="none")
        torch.manual_seed(config.seed)
        # keep the object get_peft_model returns: saving the wrapped base saves an empty adapter (peft #2032)
        model = get_peft_model(copy.deepcopy(base.model), lora)
        adapter = {"r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
                   "target_modules": list(config.lora_targets)}
        return cls(base, model, "lora", adapter)

    @classmethod
    def full(cls, base: TransformerEncoder) -> AdaptedEncoder:
        model = copy.deepcopy(base.model)
        for param in model.parameters():
            param.requires_grad_(True)
        return cls(base, model, "full", {})

    @classmethod
    def load(cls, base: TransformerEncoder, directory: str | Path, mode: str) -> AdaptedEncoder:
        """An adapter saved by :meth:`save` (``lora``: through ``PeftModel.from_pretrained``)."""
        folder = Path(directory)
        if mode == "lora":
            from peft import PeftConfig, PeftModel

            try:
                model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(folder))
                peft_config = PeftConfig.from_pretrained(str(folder))
            except Exception as error:  # peft raises ValueError, OSError, safetensors errors ...
                raise ModelLoadError(f"{folder}: not a loadable LoRA adapter: {error}") from error
            adapter = {"r": peft_config.r, "lora_alpha": peft_config.lora_alpha,  # type: ignore[attr-defined]
                       "lora_dropout": peft_config.lora_dropout,  # type: ignore[attr-defined]
                       "target_modules": sorted(peft_config.target_modules)}  # type: ignore[attr-defined]
            return cls(base, model.eval(), "lora", adapter)
        if mode == "full":
            from safetensors.torch import load_file

            model = copy.deepcopy(base.model)
            try:
                state = load_file(str(folder / "encoder.safetensors"))
                model.load_state_dict(state, strict=True)
            except Exception as error:
                raise ModelLoadError(f"{folder}: not the full encoder weights: {error}") from error
            return cls(base, model.eval(), "full", {})
        raise ValueError(f"no adapter for mode {mode!r}")

    def save(self, directory: str | Path) -> None:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        if self.mode == "lora":
            self.model.save_pretrained(str(folder))
        else:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()},
                      str(folder / "encoder.safetensors"))

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def version(self) -> str:
        """``<base version>+<mode>-<sha256 of the trained weights, 12 hex>``; computed once training is over."""
        if self._version is None:
            digest = hashlib.sha256()
            for name, value in sorted(self.model.state_dict().items()):
                if self.mode == "lora" and "lora_" not in name:
                    continue
                digest.update(name.encode())
                digest.update(value.detach().float().cpu().numpy().tobytes())
            self._version = f"{self.base.version}+{self.mode}-{digest.hexdigest()[:12]}"
        return self._version

    @property
    def dim(self) -> int:
        return self.base.dim

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled, normalised embeddings ``(len(texts), dim)`` with gradients (the base's pooling)."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.base.config.max_length,
                               return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Like :meth:`TransformerEncoder.encode`, with the adapted model (batched, sorted by length)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        self.model.eval()
        size = self.base.config.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), size):
                rows = order[start : start + size]
                out[rows] = self.embed([texts[i] for i in rows]).numpy()
        return out


def split_replay(examples: Sequence[ReplayExample], config: FineTuneConfig) -> tuple[list[ReplayExample],
                                                                                    list[ReplayExample]]:
    """(train, held out): the most recent ``holdout`` share (at most ``holdout_max``) held out, by ``ts``."""
    ordered = sorted(examples, key=lambda e: (e.ts, e.user, e.row))
    held = min(config.holdout_max, max(1, int(len(ordered) * config.holdout)))
    if len(ordered) < 2:
        raise ValueError(f"the replay buffer holds {len(ordered)} example(s): too few to fine-tune")
    return ordered[:-held], ordered[-held:]


def holdout_ndcg(scorer: TransformerScorer, examples: Sequence[ReplayExample], chunk: int = 512) -> LearnReport:
    """How ``scorer`` ranks each example's positive among the whole catalog less the example's history
    (the eval's protocol: full ranking, ties counted against the positive); nothing is learned."""
    report = LearnReport()
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        batch = scorer._batch_from_encoded([e.history for e in part], [e.ts for e in part])
        features = scorer._count_features(batch) if scorer.config.head.count_features else None
        scorer._test(report, batch, [e.row for e in part], [() for _ in part], features, 10)
        report.trained += len(part)
    return report


def _copy(scorer: TransformerScorer) -> TransformerScorer:
    copied, _ = TransformerScorer.restore(scorer.checkpoint(), scorer.encoder, scorer.cache, source="scorer copy")
    return copied


def fine_tune(
    scorer: TransformerScorer,
    config: FineTuneConfig | None = None,
    *,
    texts: Mapping[str, str] | None = None,
    cache: EmbeddingCache | None = None,
    log: Callable[[str], None] | None = None,
) -> FineTuneResult:
    """Fine-tune a copy of ``scorer`` on its replay buffer; ``scorer`` itself is not changed.

    ``texts``: every catalog item's text (``lora``/``full``: the positives are re-encoded while
    training and the catalog at the end); the scorer's encoder must then be a
    :class:`TransformerEncoder`. ``cache``: where the adapted encoder's item vectors are kept.
    """
    config = config or FineTuneConfig()
    started = time.monotonic()
    say = log or (lambda _message: None)
    train, held = split_replay(scorer.replay.examples(), config)
    serving = holdout_ndcg(scorer, held).metrics().get("ndcg@10", 0.0)
    candidate = _copy(scorer)
    head = candidate.head
    encoder: AdaptedEncoder | None = None
    item_texts: list[str] = []
    if config.mode != "head":
        # a scorer that adopted a lora/full snapshot gets a fresh adapter on the same base encoder
        base = scorer.encoder.base if isinstance(scorer.encoder, AdaptedEncoder) else scorer.encoder
        if not isinstance(base, TransformerEncoder):
            raise ValueError(f"--mode {config.mode} fine-tunes a transformers encoder; this scorer has "
                             f"{type(scorer.encoder).__name__}")
        if texts is None or any(i not in texts for i in candidate.item_ids):
            raise ValueError(f"--mode {config.mode} needs every catalog item's text")
        encoder = AdaptedEncoder.lora(base, config) if config.mode == "lora" else AdaptedEncoder.full(base)
        item_texts = [texts[i] for i in candidate.item_ids]
    groups: list[dict[str, Any]] = [{"params": list(head.parameters()), "lr": config.lr}]
    if encoder is not None:
        groups.append({"params": encoder.trainable(), "lr": config.encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    n = len(candidate.item_ids)
    base_text = head.item_text[:n].detach().clone()
    best = (serving if config.keep_serving else -float("inf"), -1, _state(candidate, encoder))
    bad_epochs = 0
    epochs_run = 0
    steps = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        head.train()
        if encoder is not None:
            encoder.model.train()
        for start in range(0, len(order), config.batch_size):
            part = [train[i] for i in order[start : start + config.batch_size]]
            batch = candidate._batch_from_encoded([e.history for e in part], [e.ts for e in part])
            rows = torch.tensor([e.row for e in part])
            optimizer.zero_grad(set_to_none=True)
            if encoder is not None:
                distinct = torch.unique(rows)[: config.encoder_items]
                fresh = encoder.embed([item_texts[int(r)] for r in distinct])
                text = base_text.clone()
                text[distinct] = fresh
                head.item_text = torch.cat([text, head.item_text[n:].detach()])  # a tensor with gradients
            loss = candidate.trainer._loss(batch, rows, n, None, None, None)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], candidate.config.trainer.grad_clip)
            optimizer.step()
            steps += 1
            if encoder is not None:
                head.item_text = head.item_text.detach()
        head.eval()
        epochs_run = epoch + 1
        if encoder is not None:  # the held-out ranking reads the catalog as the adapted encoder writes it
            encoder._version = None
            _set_texts(candidate, encoder.encode(item_texts))
            base_text = head.item_text[:n].detach().clone()
        candidate._vectors = None
        score = holdout_ndcg(candidate, held).metrics().get("ndcg@10", 0.0)
        say(f"epoch {epoch + 1}: held-out NDCG@10 {score:.4f} (serving {serving:.4f})")
        if score > best[0] or not config.keep_best:
            best = (score, epoch, _state(candidate, encoder))
            bad_epochs = 0
        else:
            bad_epochs += 1
        if bad_epochs >= config.patience or time.monotonic() - started > 60.0 * config.max_minutes:
            break
    _load_state(candidate, encoder, best[2])
    if encoder is not None:
        encoder._version = None
        encoder.model.eval()
        vectors = (cache or EmbeddingCache(None)).encode(encoder, item_texts)
        _set_texts(candidate, vectors)
        candidate.encoder_version = encoder.version
        candidate.encoder = encoder  # type: ignore[assignment]
    candidate._vectors = None
    candidate.trainer.set_anchor()  # the online head is pulled toward the snapshot from now on
    metrics = {
        "ndcg@10": best[0],
        "serving_ndcg@10": serving,
        "best_epoch": float(best[1] + 1),
        "epochs": float(epochs_run),
        "steps": float(steps),
        "minutes": (time.monotonic() - started) / 60.0,
    }
    window = {
        "train_examples": float(len(train)),
        "holdout_examples": float(len(held)),
        "ts_min": float(train[0].ts if train else held[0].ts),
        "holdout_ts_min": float(held[0].ts),
        "ts_max": float(held[-1].ts),
    }
    return FineTuneResult(candidate, config, metrics, window, encoder)


def _set_texts(scorer: TransformerScorer, vectors: NDArray[np.float32]) -> None:
    n = len(scorer.item_ids)
    with torch.no_grad():
        scorer.head.item_text[:n] = torch.from_numpy(np.ascontiguousarray(vectors))
    scorer._unit_text = None
    scorer._text_cosines = np.zeros((0, 0), dtype=np.float32)
    scorer._cosine_rows = 0
    scorer._vectors = None


def _state(scorer: TransformerScorer, encoder: AdaptedEncoder | None) -> dict[str, torch.Tensor]:
    state = {f"head.{k}": v.detach().clone() for k, v in scorer.head.state_dict().items()}
    if encoder is not None:
        state.update({f"encoder.{k}": v.detach().clone() for k, v in encoder.model.state_dict().items()
                      if encoder.mode == "full" or "lora_" in k})
    return state


def _load_state(scorer: TransformerScorer, encoder: AdaptedEncoder | None, state: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        head_state = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
        scorer.head.item_text = head_state.pop("item_text").clone()
        scorer.head.load_state_dict(head_state, strict=False)
        if encoder is not None:
            encoder.model.load_state_dict({k[len("encoder.") :]: v for k, v in state.items()
                                           if k.startswith("encoder.")}, strict=False)
    scorer._vectors = None
