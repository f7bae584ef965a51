"""Everything Redis and the topics hold, as raw bytes: to check that an id appears nowhere."""

from __future__ import annotations

from collections.abc import Iterable

from ripplerec.config import Settings


def redis_dump(settings: Settings) -> dict[bytes, list[bytes]]:
    """Every key of the Redis database -> its members as bytes (type-aware: strings, hashes, sets,
    sorted sets with their scores, lists, streams; anything else as DUMP's serialisation)."""
    import redis

    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    out: dict[bytes, list[bytes]] = {}
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            parts: list[bytes]
            if kind == b"string":
                parts = [client.get(key) or b""]
            elif kind == b"hash":
                parts = [x for pair in client.hgetall(key).items() for x in pair]
            elif kind == b"set":
                parts = list(client.smembers(key))
            elif kind == b"zset":
                parts = [x for member, score in client.zrange(key, 0, -1, withscores=True)
                         for x in (member, repr(score).encode())]
            elif kind == b"list":
                parts = list(client.lrange(key, 0, -1))
            elif kind == b"stream":
                parts = [x for entry_id, fields in client.xrange(key) for x in (entry_id, *fields.keys(),
                                                                                 *fields.values())]
            elif kind == b"none":  # expired or deleted while scanning
                continue
            else:
                parts = [client.dump(key) or b""]
            out[key] = parts
    finally:
        client.close()
    return out


def topic_records(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None, list]]:
    """``(key, value, headers)`` of every record on ``topic``, from the start to its end now."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             consumer_timeout_ms=1000, api_version=settings.api_version_tuple)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        out = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for message in consumer:
                out.append((message.key, message.value, list(message.headers or [])))
                if all(consumer.position(tp) >= ends[tp] for tp in partitions):
                    break
        return out
    finally:
        consumer.close()


def where_found(needles: Iterable[str], settings: Settings, *, topics: bool = True) -> list[str]:
    """Where in Redis (any key name or member) and in every topic of ``settings.topics`` (any key,
    value or header) one of ``needles`` occurs as UTF-8 bytes; empty when nowhere."""
    wanted = [n.encode("utf-8") for n in needles]
    hits = []
    for key, parts in redis_dump(settings).items():
        for needle in wanted:
            if needle in key or any(needle in part for part in parts):
                hits.append(f"redis {key!r} holds {needle!r}")
    if topics:
        for topic in settings.topics.all().values():
            for key, value, headers in topic_records(settings, topic):
                blobs = [key or b"", value or b"", *(h for pair in headers for h in (pair[0].encode(), pair[1] or b""))]
                for needle in wanted:
                    if any(needle in blob for blob in blobs):
                        hits.append(f"topic {topic} holds {needle!r}")
    return hits
