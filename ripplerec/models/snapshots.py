"""Fine-tune snapshots on disk: versioned folders written atomically, a serving pointer, rollback.

Layout under ``root``::

    <version>/head.safetensors   the head as one exported blob (what scorers load, with its manifest)
    <version>/adapter/...        lora: the peft adapter (adapter_config.json, adapter_model.safetensors)
    <version>/encoder/...        full: the encoder's weights (encoder.safetensors)
    <version>/manifest.json      version, parent, mode, created_at, data window, metrics, fine-tune and
                                 adapter config, encoder version, and the sha256 of every file above
    serving.json                 {"serving": version, "history": [every version promoted, in order]}

A folder is written under a temporary name and renamed into place, so a reader sees a whole snapshot
or none. :meth:`SnapshotStore.read` checks the manifest and every file's hash: a corrupt, truncated or
substituted snapshot is refused with :class:`SnapshotError` (a :class:`ModelLoadError`) and whatever
serves keeps serving. Promotion moves the pointer; :meth:`SnapshotStore.rollback` moves it back to the
version promoted before, whose files are unchanged, so its scores come back exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ripplerec.models.base import ModelLoadError
from ripplerec.models.finetune import AdaptedEncoder, FineTuneResult
from ripplerec.models.shadow_gate import ShadowVerdict
from ripplerec.models.transformer_scorer import TransformerScorer

__all__ = ["SnapshotStore", "SnapshotError", "Snapshot", "SNAPSHOT_FORMAT"]

SNAPSHOT_FORMAT = "ripplerec.snapshot"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class SnapshotError(ModelLoadError):
    """A snapshot is missing, incomplete, corrupt, or made for another model; nothing was changed."""


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot: its manifest, the exported head blob, and its folder."""

    manifest: dict[str, Any]
    head: bytes
    path: Path

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def mode(self) -> str:
        return str(self.manifest["mode"])


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


class SnapshotStore:
    """Snapshot folders under ``root`` (one host; a fine-tune job and the CLI share it)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- writing ---------------------------------------------------------------------------------------
    def write(self, result: FineTuneResult, parent: str | None, version: str | None = None,
              extra: Mapping[str, Any] | None = None, verdict: ShadowVerdict | None = None) -> Snapshot:
        """Write a fine-tune's result as a new snapshot folder (atomically) and return it, verified.

        ``verdict``: its shadow-window race against the serving model (:mod:`ripplerec.models.shadow_gate`),
        recorded as the gate; without one the gate recorded is the fine-tune's replay hold-out comparison."""
        scorer = result.scorer
        created = time.time()
        if version is None:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(created))
            version = f"snap-{stamp}-{result.config.mode}-{os.urandom(3).hex()}"
        if not _VERSION.fullmatch(version):
            raise ValueError(f"invalid snapshot version {version!r}")
        final = self.root / version
        if final.exists():
            raise FileExistsError(f"snapshot {version} exists")
        tmp = self.root / f".tmp-{version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            head = scorer.export_head({"version_name": version, "parent": parent, "kind": "snapshot"})
            (tmp / "head.safetensors").write_bytes(head)
            if result.encoder is not None:
                result.encoder.save(tmp / ("adapter" if result.encoder.mode == "lora" else "encoder"))
            files = {str(p.relative_to(tmp)): _sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            manifest = {
                "format": SNAPSHOT_FORMAT,
                "version": version,
                "parent": parent,
                "mode": result.config.mode,
                "created_at": created,
                "window": result.window,
                "metrics": result.metrics,
                "gate_passed": verdict.promote if verdict is not None else result.improved,
                "gate": {"kind": "shadow", **verdict.to_dict()} if verdict is not None else {"kind": "replay-holdout"},
                "finetune": result.config.to_dict(),
                "adapter": result.encoder.adapter_config if result.encoder is not None else None,
                "encoder_version": scorer.encoder_version,
                "base_encoder_version": result.encoder.base.version if result.encoder is not None
                else scorer.encoder_version,
                "items": len(scorer.item_ids),
                "files": files,
                **dict(extra or {}),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
            _fsync_tree(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.read(version)

    # -- reading ---------------------------------------------------------------------------------------
    def versions(self) -> list[dict[str, Any]]:
        """Every complete snapshot's manifest, oldest first (unreadable ones are listed with an ``error``)."""
        out: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return out
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                out.append(json.loads((folder / "manifest.json").read_text()))
            except (OSError, ValueError) as error:
                out.append({"version": folder.name, "error": str(error), "created_at": 0.0})
        return sorted(out, key=lambda m: (float(m.get("created_at", 0.0)), str(m.get("version"))))

    def read(self, version: str) -> Snapshot:
        """The snapshot ``version``, every file checked against its manifest (:class:`SnapshotError`)."""
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise SnapshotError(f"invalid snapshot version {version!r}")
        folder = self.root / version
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except FileNotFoundError as error:
            raise SnapshotError(f"snapshot {version}: no manifest in {folder}") from error
        except (OSError, ValueError) as error:
            raise SnapshotError(f"snapshot {version}: unreadable manifest: {error}") from error
        if not isinstance(manifest, dict) or manifest.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"snapshot {version}: not a ripplerec snapshot manifest")
        if manifest.get("version") != version:
            raise SnapshotError(f"snapshot {version}: its manifest names {manifest.get('version')!r}")
        files = manifest.get("files")
        if not isinstance(files, dict) or "head.safetensors" not in files:
            raise SnapshotError(f"snapshot {version}: the manifest lists no head.safetensors")
        for name, expected in files.items():
            path = folder / name
            if not path.is_file():
                raise SnapshotError(f"snapshot {version}: {name} is missing")
            found = _sha256_file(path)
            if found != expected:
                raise SnapshotError(f"snapshot {version}: {name} hashes to {found[:12]}, the manifest says "
                                    f"{str(expected)[:12]} ({path.stat().st_size} bytes): corrupt or truncated")
        return Snapshot(manifest, (folder / "head.safetensors").read_bytes(), folder)

    def load(self, version: str, serving: TransformerScorer) -> TransformerScorer:
        """A scorer like ``serving`` with the snapshot's weights (and, for lora/full, its encoder and item
        texts); ``serving`` is never changed. :class:`SnapshotError` when the snapshot does not fit it."""
        snapshot = self.read(version)
        if snapshot.mode != "head":
            raise SnapshotError(f"snapshot {version} ({snapshot.mode}) re-encodes the catalog: use load_adapted")
        try:
            return serving.with_head(snapshot.head, source=f"snapshot {version}")
        except ModelLoadError as error:
            raise SnapshotError(str(error)) from error

    def load_adapted(self, version: str, serving: TransformerScorer, texts: Mapping[str, str]) -> TransformerScorer:
        """:meth:`load` for any mode: lora/full snapshots re-encode the catalog (``texts``: item id -> text)
        with the saved encoder, so the result scores like the fine-tuned scorer did."""
        snapshot = self.read(version)
        if snapshot.mode == "head":
            return self.load(version, serving)
        from ripplerec.models.encoder import TransformerEncoder

        if not isinstance(serving.encoder, TransformerEncoder):
            raise SnapshotError(f"snapshot {version} ({snapshot.mode}) needs the transformers encoder")
        where = snapshot.path / ("adapter" if snapshot.mode == "lora" else "encoder")
        encoder = AdaptedEncoder.load(serving.encoder, where, snapshot.mode)
        if encoder.version != snapshot.manifest.get("encoder_version"):
            raise SnapshotError(f"snapshot {version}: the adapter gives encoder {encoder.version}, the manifest "
                                f"says {snapshot.manifest.get('encoder_version')}")
        from ripplerec.models.base import Item

        ids = list(serving.item_ids)
        shell = TransformerScorer(serving.config, encoder, serving.cache, serving.name)  # type: ignore[arg-type]
        shell.add_items([Item(i, i) for i in ids], serving.cache.encode(encoder, [texts[i] for i in ids]))
        try:
            return shell.with_head(snapshot.head, source=f"snapshot {version}")
        except ModelLoadError as error:
            raise SnapshotError(str(error)) from error

    def commit(self, result: FineTuneResult, parent: str | None, verdict: ShadowVerdict | None = None,
               extra: Mapping[str, Any] | None = None) -> tuple[Snapshot, bool]:
        """Write ``result`` as a snapshot and promote it only when it passed the gate; (the snapshot, whether
        it was promoted).

        The gate is ``verdict``, the candidate's race against the serving model on the events after the
        snapshot (:class:`~ripplerec.models.shadow_gate.ShadowGate`): promoted when it ranked them better.
        Without a verdict it is the fine-tune's own comparison on the replay buffer's recent window, which
        the serving model has already learned (so it rarely passes, and says little when it does)."""
        snapshot = self.write(result, parent, extra=extra, verdict=verdict)
        if not snapshot.manifest["gate_passed"]:
            return snapshot, False
        return self.promote(snapshot.version), True

    # -- serving pointer -------------------------------------------------------------------------------
    def _pointer(self) -> dict[str, Any]:
        try:
            state = json.loads((self.root / "serving.json").read_text())
        except FileNotFoundError:
            return {"serving": None, "history": []}
        except (OSError, ValueError) as error:
            raise SnapshotError(f"{self.root}/serving.json is unreadable: {error}") from error
        return {"serving": state.get("serving"), "history": list(state.get("history", []))}

    def _write_pointer(self, state: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".serving.json.tmp{os.getpid()}"
        with open(tmp, "w") as handle:
            handle.write(json.dumps(dict(state), indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.root / "serving.json")

    @property
    def serving(self) -> str | None:
        """The snapshot version promoted last (and not rolled back), if any."""
        value = self._pointer()["serving"]
        return str(value) if value is not None else None

    def promote(self, version: str) -> Snapshot:
        """Make ``version`` the serving snapshot (verified first; :class:`SnapshotError` leaves the pointer)."""
        snapshot = self.read(version)
        state = self._pointer()
        state["history"].append(version)
        state["serving"] = version
        self._write_pointer(state)
        return snapshot

    def rollback(self) -> Snapshot | None:
        """Serve the snapshot promoted before the current one again (None: nothing before it, the pointer
        is cleared and the online head's own versions serve)."""
        state = self._pointer()
        if not state["history"]:
            raise SnapshotError("no snapshot has been promoted: nothing to roll back")
        state["history"].pop()
        previous = state["history"][-1] if state["history"] else None
        snapshot = self.read(previous) if previous is not None else None
        state["serving"] = previous
        self._write_pointer(state)
        return snapshot
