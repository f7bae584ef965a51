"""One test per private part of faust-streaming / aiokafka that ``ripplerec.streams.faust_compat`` uses.

Each fails loudly when an upgrade renames or removes what we reach into.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer

from ripplerec.config import Settings
from ripplerec.streams import faust_compat
from ripplerec.streams.app import bare_app


def test_faust_builds_its_consumer_in_the_method_we_wrap() -> None:
    from faust.transport.drivers import aiokafka as driver

    method = getattr(driver.AIOKafkaConsumerThread, faust_compat.CONSUMER_FACTORY)
    assert callable(method)
    faust_compat.patch_consumer_factory()
    assert getattr(driver.AIOKafkaConsumerThread, "_ripple_patched", False)


def test_aiokafka_reads_fetch_wait_and_group_instance_id_from_the_attributes_we_set() -> None:
    async def build() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=123, group_id="g",
                                group_instance_id="static-1")

    consumer = asyncio.run(build())
    assert consumer._fetch_max_wait_ms == 123
    assert consumer._group_instance_id == "static-1"
    start = inspect.getsource(AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start
    assert "group_instance_id=self._group_instance_id" in start


def test_the_patched_factory_sets_both_on_the_consumer_faust_creates() -> None:
    settings = Settings(consumer_fetch_max_wait_ms=7, group_instance_id="worker-a")
    app = bare_app(settings)

    async def build() -> AIOKafkaConsumer:
        from faust.transport.drivers import aiokafka as driver

        thread = driver.AIOKafkaConsumerThread(app.consumer, loop=asyncio.get_running_loop())
        return getattr(thread, faust_compat.CONSUMER_FACTORY)(app.transport)

    consumer = asyncio.run(build())
    assert consumer._fetch_max_wait_ms == 7
    assert consumer._group_instance_id == "worker-a"


def test_faust_producer_wraps_an_aiokafka_producer_we_can_reach() -> None:
    from faust.transport.drivers import aiokafka as driver

    assert callable(getattr(driver.Producer, "_ensure_producer", None))
    source = inspect.getsource(driver.Producer._ensure_producer)
    assert "return" in source and "_producer" in source


def test_stream_ack_is_the_two_hooks_we_call() -> None:
    app = faust.App("compat-test", broker="memory://", web_enabled=False)
    stream = app.stream([])
    hooks = faust_compat.ack_hooks(stream)
    assert hooks is not None
    source = inspect.getsource(faust.Stream.ack)
    assert "_on_stream_event_out" in source and "_on_message_out" in source


_STATE_CHILD = """
import json, os, sys
from faust.worker import Worker
from ripplerec.config import Settings
from ripplerec.streams import faust_compat
from ripplerec.streams.app import bare_app

bootstrap, path, name, wait = sys.argv[1:5]
settings = Settings(bootstrap_servers=bootstrap, app_id=name, web_port=0, consumer_fetch_max_wait_ms=int(wait))
app = bare_app(settings)
topic = app.topic(name, key_type=bytes, value_type=bytes, partitions=1)

@app.agent(topic)
async def reader(stream):
    async for event in stream.events():
        try:
            progress = await faust_compat.commit_progress(app)
            report = {"consumer": faust_compat.consumer_state(app, name),
                      "channel": faust_compat.channel_state(stream),
                      "progress": {f"{t}[{p}]": list(v) for (t, p), v in progress.items()}}
        except Exception as error:
            report = {"error": repr(error)}
        with open(path, "w") as out:
            json.dump(report, out, default=str)
        os._exit(0)

sys.argv = [sys.argv[0]]
Worker(app, loglevel="error", quiet=True).execute_from_commandline()
"""


def _worker_state(embedded_stack, tmp_path, wait_ms: int) -> dict:
    """What a Faust worker (``consumer_fetch_max_wait_ms=wait_ms``) reports of itself once it holds a message."""
    import json
    import subprocess
    import sys
    import uuid

    from kafka import KafkaProducer

    from ripplerec.embedded import create_topics

    name = f"compat-state-{uuid.uuid4().hex[:8]}"
    create_topics(embedded_stack.bootstrap_servers, [name], 1)
    producer = KafkaProducer(bootstrap_servers=embedded_stack.bootstrap_servers)
    producer.send(name, b"x", partition=0).get(timeout=30)
    producer.close()
    out = tmp_path / "state.json"
    subprocess.run([sys.executable, "-c", _STATE_CHILD, embedded_stack.bootstrap_servers, str(out), name,
                    str(wait_ms)], timeout=120, check=False, cwd=tmp_path)
    report = json.loads(out.read_text())
    assert "error" not in report, report
    return report


def test_consumer_and_channel_state_read_what_a_running_worker_holds(embedded_stack, tmp_path) -> None:
    """The stall report's reads of Faust's and aiokafka's private state, on a worker that holds a message."""
    report = _worker_state(embedded_stack, tmp_path, 10)
    consumer, channel = report["consumer"], report["channel"]
    assert consumer["assigned"] == [0] and consumer["flow_control_active"] and consumer["consumer_flow_active"]
    assert consumer["active"] == [0] and consumer["paused"] == [] and consumer["buffered"] == []
    assert consumer["producer_buffer"] == 0
    fetched = consumer["aiokafka[0]"]
    assert fetched["paused"] is False and fetched["position"] >= 1 and fetched["highwater"] >= 1
    assert channel["maxsize"] > 0 and channel["queued"] >= 0 and channel["pressure_drop_pending"] == 0
    assert consumer["fetch_wait_ms"] >= 10
    # commit_progress: the broker's committed offset (none yet: nothing acked) beside the fetch position
    (name, (committed, position)), = report["progress"].items()
    assert name.endswith("[0]") and committed is None and position == fetched["position"]


def test_faust_records_a_refused_commit_as_committed_so_health_asks_the_broker() -> None:
    """What ``commit_progress`` works around: Faust's driver returns False when the broker refuses a
    commit as "already rebalanced", and ``_commit_offsets`` updates ``_committed_offset`` either way."""
    from faust.transport import consumer
    from faust.transport.drivers import aiokafka as driver

    refused = inspect.getsource(driver.AIOKafkaConsumerThread._commit)
    assert '"already rebalanced" in str(exc)' in refused and "return False" in refused
    source = inspect.getsource(consumer.Consumer._commit_offsets)
    assert source.index("self._committed_offset.update(committable_offsets)") > source.index("if did_commit:")
    assert callable(driver.AIOKafkaConsumerThread.call_thread)


def test_the_worker_consumer_raises_its_fetch_wait_until_the_broker_answers(embedded_stack, tmp_path) -> None:
    """At a 0 ms wait the embedded broker answers every fetch empty (as it does at 10 ms once a log holds
    ~16,000 batches): the worker's consumer reads its message only because the wait grows."""
    report = _worker_state(embedded_stack, tmp_path, 0)  # it returns once the agent holds the message
    assert report["consumer"]["assigned"] == [0]


def test_adapt_fetch_wait_reads_what_a_fixed_wait_never_gets(embedded_stack) -> None:
    import uuid

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from kafka import KafkaProducer

    from ripplerec.embedded import create_topics

    name = f"compat-wait-{uuid.uuid4().hex[:8]}"
    create_topics(embedded_stack.bootstrap_servers, [name], 1)
    producer = KafkaProducer(bootstrap_servers=embedded_stack.bootstrap_servers)
    for n in range(20):
        producer.send(name, str(n).encode(), partition=0)
    producer.flush()
    producer.close()

    async def read(adapt: bool) -> tuple[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=embedded_stack.bootstrap_servers, enable_auto_commit=False,
                                    fetch_max_wait_ms=0)
        await consumer.start()
        if adapt:
            faust_compat.adapt_fetch_wait(consumer)
        tp = TopicPartition(name, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        got = 0
        for _ in range(20):
            got += len((await consumer.getmany(tp, timeout_ms=100)).get(tp, []))
            if got == 20:
                break
        wait = consumer._fetcher._fetch_max_wait_ms
        await consumer.stop()
        return got, wait

    assert asyncio.run(read(adapt=False)) == (0, 0)  # the broker's behaviour this works around
    got, wait = asyncio.run(read(adapt=True))
    assert got == 20 and wait <= faust_compat.FETCH_WAIT_CAP_MS  # back towards 0 once records came


def test_committed_offsets_of_many_partitions_in_one_call_match_kafka_python_one_by_one(embedded_stack) -> None:
    import uuid

    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from ripplerec.embedded import create_topics

    name = f"compat-committed-{uuid.uuid4().hex[:8]}"
    create_topics(embedded_stack.bootstrap_servers, [name], 3)
    consumer = KafkaConsumer(bootstrap_servers=embedded_stack.bootstrap_servers, group_id=name,
                             enable_auto_commit=False)
    try:
        tps = [TopicPartition(name, p) for p in range(3)]
        consumer.commit({tps[0]: OffsetAndMetadata(7, "", -1), tps[2]: OffsetAndMetadata(3, "", -1)})
        found = faust_compat.committed_offsets(consumer, tps)
        assert found == {tp: consumer.committed(tp) for tp in tps}
        assert found[tps[0]] == 7 and found[tps[2]] == 3
    finally:
        consumer.close()


def test_faust_table_manager_sleeps_at_start_and_the_patch_skips_it_without_tables() -> None:
    from faust.tables.manager import TableManager

    faust_compat.skip_table_start_delay()
    original = TableManager._ripple_original_on_start
    assert "self.sleep(1.0)" in inspect.getsource(original)  # Faust's delay, still there to skip

    class Manager:  # what Faust's on_start touches, recording the calls
        def __init__(self, tables: dict) -> None:
            self.data, self.should_stop, self.calls = tables, False, []

        async def sleep(self, seconds: float) -> None:
            self.calls.append(("sleep", seconds))

        async def _update_channels(self) -> None:
            self.calls.append(("channels",))

        @property
        def recovery(self) -> Any:
            manager = self

            class Recovery:
                async def start(self) -> None:
                    manager.calls.append(("recovery",))

            return Recovery()

    without, with_tables = Manager({}), Manager({"t": object()})
    asyncio.run(TableManager.on_start(without))
    asyncio.run(TableManager.on_start(with_tables))
    assert without.calls == [("channels",), ("recovery",)]
    assert with_tables.calls == [("sleep", 1.0), ("channels",), ("recovery",)]
    assert "sleep" not in vars(without)  # the shadowing is undone
