"""Saving and loading model folders: JSON config + safetensors weights, checked on the way back in."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ripplerec.models.base import ModelLoadError

__all__ = ["FORMAT_VERSION", "write_json", "read_manifest", "check_shapes", "atomic_path"]

#: Bumped when the layout of saved folders changes incompatibly.
FORMAT_VERSION = 1


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path`` to write to and then ``os.replace`` onto it."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_manifest(directory: str | Path, expected_class: str, filename: str = "config.json") -> dict[str, Any]:
    """Read a folder's manifest and check it was written by ``expected_class`` in this format version."""
    path = Path(directory) / filename
    if not path.is_file():
        raise ModelLoadError(f"{path} not found: not a saved {expected_class} folder")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from error
    if manifest.get("class") != expected_class:
        raise ModelLoadError(f"{path} holds a {manifest.get('class')!r}, not a {expected_class!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} has format_version {manifest.get('format_version')!r}; this ripplerec reads {FORMAT_VERSION}"
        )
    return manifest


def check_shapes(source: str, expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> None:
    """Fail with every mismatch listed when saved tensors do not fit the model built from the config."""
    problems = [f"missing {name}" for name in expected if name not in found]
    problems += [f"unexpected {name}" for name in found if name not in expected]
    problems += [
        f"{name}: saved {tuple(found[name])}, expected {tuple(shape)}"
        for name, shape in expected.items()
        if name in found and tuple(found[name]) != tuple(shape)
    ]
    if problems:
        raise ModelLoadError(f"{source} does not fit this model: " + "; ".join(problems))
