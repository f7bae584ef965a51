"""How long a consumer's fetch wait delays a message on the embedded broker (Tansu).

    python bench/diagnostics/tansu_fetch_wait.py [--messages 40]

A consumer (kafka-python, then aiokafka) polls one partition continuously while a producer sends
messages at random instants 10-80 ms apart; prints send -> receive latency per ``fetch_max_wait_ms``.
A broker that answers a fetch as soon as data arrives (``fetch.min.bytes=1``) shows latencies that
do not grow with the wait; one that holds the fetch shows latencies that do.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import threading
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ripplerec.embedded import EmbeddedStack

WAITS_MS = (500, 100, 20, 5, 1)


def summary(latencies_ms: list[float]) -> str:
    ordered = sorted(latencies_ms)
    return (f"n={len(ordered):3d}  p50 {statistics.median(ordered):6.1f}  "
            f"p90 {ordered[int(0.9 * (len(ordered) - 1))]:6.1f}  max {ordered[-1]:6.1f} ms")


def kafka_python(bootstrap: str, topic: str, wait_ms: int, messages: int, producer: KafkaProducer) -> list[float]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, api_version=(2, 4), fetch_max_wait_ms=wait_ms)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_end(partition)
    consumer.position(partition)
    received: dict[int, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=50).values():
                for message in batch:
                    received[int(message.value)] = time.perf_counter()

    thread = threading.Thread(target=poll)
    thread.start()
    sent = send_at_random_instants(lambda i: producer.send(topic, str(i).encode(), partition=0), messages)
    deadline = time.monotonic() + 5 + 2 * wait_ms / 1000
    while len(received) < messages and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join()
    consumer.close()
    return [(received[i] - sent[i]) * 1000 for i in sent if i in received]


def send_at_random_instants(send, messages: int) -> dict[int, float]:
    time.sleep(0.5)  # let the consumer's first fetch start
    sent = {}
    for i in range(messages):
        time.sleep(random.uniform(0.01, 0.08))
        sent[i] = time.perf_counter()
        send(i)
    return sent


async def aiokafka(bootstrap: str, topic: str, wait_ms: int, messages: int) -> list[float]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import TopicPartition as AioTopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    partition = AioTopicPartition(topic, 0)
    consumer.assign([partition])
    await consumer.seek_to_end(partition)
    await consumer.position(partition)
    received: dict[int, float] = {}

    async def poll() -> None:
        async for message in consumer:
            received[int(message.value)] = time.perf_counter()

    task = asyncio.ensure_future(poll())
    await asyncio.sleep(0.5)
    sent = {}
    for i in range(messages):
        await asyncio.sleep(random.uniform(0.01, 0.08))
        sent[i] = time.perf_counter()
        await producer.send(topic, str(i).encode(), partition=0)
    deadline = time.monotonic() + 5 + 2 * wait_ms / 1000
    while len(received) < messages and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    task.cancel()
    await consumer.stop()
    await producer.stop()
    return [(received[i] - sent[i]) * 1000 for i in sent if i in received]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=40)
    args = parser.parse_args()
    with EmbeddedStack(topics=["fetch.kp", "fetch.aio"], partitions=1, start_redis=False) as stack:
        bootstrap = stack.bootstrap_servers
        producer = KafkaProducer(bootstrap_servers=bootstrap, api_version=(2, 4), linger_ms=0, acks=1)
        for wait in WAITS_MS:
            latencies = kafka_python(bootstrap, "fetch.kp", wait, args.messages, producer)
            print(f"kafka-python  fetch_max_wait_ms={wait:4d}  {summary(latencies)}", flush=True)
        producer.close()
        for wait in WAITS_MS:
            latencies = asyncio.run(aiokafka(bootstrap, "fetch.aio", wait, args.messages))
            print(f"aiokafka      fetch_max_wait_ms={wait:4d}  {summary(latencies)}", flush=True)


if __name__ == "__main__":
    main()
