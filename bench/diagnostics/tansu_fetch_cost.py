"""The embedded broker's CPU per message, as its partitions grow (why request -> reply latency degrades).

    python bench/diagnostics/tansu_fetch_cost.py [--rate 200] [--windows 8] [--seconds 5] [--partitions 4 16]

For each partition count, starts a fresh embedded broker (Tansu, memory storage) with one topic, then
runs back-to-back windows in which an aiokafka producer sends ``--rate`` small messages per second
(one message per produce batch, as a request or a reply is) while an aiokafka consumer reads them
(10 ms fetch wait, as the worker's). Prints the broker's CPU per message in each window, with the
number of messages stored so far.

What it shows: on Tansu 0.6.0's memory engine a fetch lists every stored batch of each partition it
reads from, so the broker's cost per message grows with the partition length; and Tansu does not
implement DeleteRecords (the request panics in the broker), so a topic cannot be trimmed. A
request/reply topic pair at a steady rate therefore gets slower the longer the broker runs; more
partitions spread the batches thinner and slow the growth, at the price of more partitions per fetch.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.proc_stats import cpu_seconds  # noqa: E402
from ripplerec.embedded import EmbeddedStack  # noqa: E402


async def windows(bootstrap: str, partitions: int, broker_pid: int, args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await consumer.start()
    await producer.start()
    consumer.assign([TopicPartition("t", p) for p in range(partitions)])
    received = 0

    async def read() -> None:
        nonlocal received
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            received += sum(len(records) for records in batches.values())

    reader = asyncio.ensure_future(read())
    payload = b"x" * 200
    sent = 0

    async def send(seconds: float) -> None:
        nonlocal sent
        start = time.perf_counter()
        for n in range(int(args.rate * seconds)):
            delay = start + n / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send("t", payload, key=str(sent).encode())
            sent += 1

    try:
        for window in range(args.windows):
            stored = sent
            before, started = cpu_seconds(broker_pid), time.perf_counter()
            await send(args.seconds)
            spent, took = cpu_seconds(broker_pid) - before, time.perf_counter() - started
            count = int(args.rate * args.seconds)
            print(f"  window {window + 1}: {stored:6,} messages stored before it; broker "
                  f"{spent / count * 1000:.2f} ms CPU per message ({spent / took * 100:.0f}% of a core)", flush=True)
        deadline = time.monotonic() + 5
        while received < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        print(f"  consumer read {received:,} of {sent:,} messages")
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()


def try_delete_records(bootstrap: str, log: Path) -> str:
    """Ask the broker to delete the first record of partition 0 (what trimming a topic would need)."""
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    try:
        outcome = f"answered {admin.delete_records({TopicPartition('t', 0): 1})}"
    except Exception as error:  # noqa: BLE001 - reported, it is what this check is about
        outcome = f"failed: {type(error).__name__}: {error}"
    finally:
        admin.close()
    panics = [line.strip() for line in log.read_text(errors="replace").splitlines() if "panicked" in line]
    return outcome + (f"; broker log: {panics[0]} ..." if panics else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a window")
    parser.add_argument("--partitions", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()
    for partitions in args.partitions:
        with EmbeddedStack(topics=["t"], partitions=partitions, start_redis=False) as stack:
            print(f"== {partitions} partitions, {args.rate:.0f} messages/s, fresh broker", flush=True)
            broker = next(p for p in stack.processes() if "tansu" in Path(str(p.args[0])).name)
            asyncio.run(windows(stack.bootstrap_servers, partitions, broker.pid, args))
            if partitions == args.partitions[-1]:
                print("DeleteRecords (trimming a topic): "
                      + try_delete_records(stack.bootstrap_servers, Path(stack.workdir or ".") / "tansu.log"))


if __name__ == "__main__":
    main()
