"""RecommendationClient round trips against a small responder thread on the real embedded broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ripplerec.config import Settings
from ripplerec.consumers import (
    InvalidTypeError,
    InvalidValueError,
    PublishError,
    RecommendationClient,
    RecommendationError,
    RecommendationTimeout,
    ValidationError,
)
from ripplerec.schemas import AvroCodec

pytestmark = pytest.mark.integration

SILENT_USER = "silent"  # the responder never answers this user
FAILING_USER = "failing"  # ... and answers this one with an error


class Responder:
    """A stand-in scorer: answers each RecommendationRequest with k items, echoing the request."""

    def __init__(self, settings: Settings, codec: AvroCodec) -> None:
        self.settings, self.codec = settings, codec
        common = {**settings.kafka_client_kwargs(), "api_version": settings.api_version_tuple}
        self.consumer = KafkaConsumer(**common, enable_auto_commit=False)
        topic = settings.topics.rec_requests
        self.consumer.assign([TopicPartition(topic, p) for p in self.consumer.partitions_for_topic(topic)])
        self.consumer.seek_to_beginning()
        self.producer = KafkaProducer(**common, acks="all", enable_idempotence=False)
        self.requests: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for batch in self.consumer.poll(timeout_ms=50).values():
                for message in batch:
                    request = self.codec.decode("RecommendationRequest", message.value)
                    self.requests.append(request)
                    if request["user_id"] == SILENT_USER:
                        continue
                    # A proactive recommendation and an undecodable message first: the client ignores both.
                    noise = {
                        "request_id": None, "trigger_event_id": "e1", "user_id": request["user_id"],
                        "items": [], "model_version": "v0", "produced_at": 0, "error": None,
                    }
                    topic = self.settings.topics.recommendations
                    self.producer.send(topic, key=message.key, value=self.codec.encode("Recommendation", noise))
                    self.producer.send(topic, key=message.key, value=b"\x00garbage")
                    reply = {
                        "request_id": request["request_id"],
                        "trigger_event_id": None,
                        "user_id": request["user_id"],
                        "items": [
                            {"item_id": f"{request['user_id']}-item-{i}", "score": 1.0 / (i + 1), "influences": []}
                            for i in range(request["k"])
                        ],
                        "model_version": "test-1",
                        "produced_at": int(time.time() * 1000),
                        "error": "no profile" if request["user_id"] == FAILING_USER else None,
                    }
                    self.producer.send(topic, key=message.key, value=self.codec.encode("Recommendation", reply))
            self.producer.flush()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.consumer.close(autocommit=False)
        self.producer.close(1)


@pytest.fixture
def responder(settings: Settings, codec: AvroCodec) -> Iterator[Responder]:
    r = Responder(settings, codec)
    r.thread.start()
    yield r
    r.close()


@pytest.fixture
def client(settings: Settings, codec: AvroCodec) -> Iterator[RecommendationClient]:
    with RecommendationClient(settings, codec=codec) as c:
        yield c


def test_request_round_trips(client: RecommendationClient, responder: Responder) -> None:
    reply = client.request("alice", k=3, exclude=["seen-1"], context={"page": "home"}, timeout=10)
    assert reply["user_id"] == "alice" and reply["model_version"] == "test-1"
    assert [item["item_id"] for item in reply["items"]] == ["alice-item-0", "alice-item-1", "alice-item-2"]
    (request,) = responder.requests
    assert request["request_id"] == reply["request_id"]
    assert request["exclude"] == ["seen-1"] and request["context"] == {"page": "home"} and request["k"] == 3
    assert client.pending == 0
    assert client.undecodable >= 1  # the garbage message was counted, not mistaken for a reply


def test_concurrent_requests_from_threads_each_get_their_own_reply(
    client: RecommendationClient, responder: Responder
) -> None:
    users = [f"user-{i}" for i in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda u: client.request(u, k=2, timeout=15), users))
    assert [r["user_id"] for r in replies] == users
    assert all(r["items"][0]["item_id"] == f"{r['user_id']}-item-0" for r in replies)
    assert len({r["request_id"] for r in replies}) == len(users)


def test_submit_pipelines_requests(client: RecommendationClient, responder: Responder) -> None:
    pending = [client.submit(f"p{i}", k=1, timeout=15) for i in range(30)]
    replies = [p.result(timeout=20) for p in pending]
    assert [r["request_id"] for r in replies] == [p.request_id for p in pending]


def test_timeout_and_error_replies(client: RecommendationClient, responder: Responder) -> None:
    started = time.monotonic()
    with pytest.raises(RecommendationTimeout) as timeout:
        client.request(SILENT_USER, k=1, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 3
    assert isinstance(timeout.value, TimeoutError) and timeout.value.request_id
    assert client.pending == 0
    with pytest.raises(RecommendationError, match="no profile"):
        client.request(FAILING_USER, k=1, timeout=10)
    future = client.submit(SILENT_USER, k=1, timeout=0.3)  # expired by the listener, not by a waiter
    with pytest.raises(RecommendationTimeout):
        future.result(timeout=5)


def test_bad_arguments_are_rejected_before_sending(client: RecommendationClient, responder: Responder) -> None:
    for k, error in [(0, InvalidValueError), (client.settings.limits.max_k + 1, InvalidValueError),
                     ("5", InvalidTypeError)]:
        with pytest.raises(error) as info:
            client.request("u", k=k)
        assert info.value.field == "k"
    with pytest.raises(ValidationError) as user:
        client.request("", k=1)
    assert user.value.field == "user_id"
    with pytest.raises(ValidationError) as exclude:
        client.request("u", exclude=[""])
    assert exclude.value.field == "exclude"
    with pytest.raises(InvalidValueError) as bad_timeout:
        client.request("u", timeout=0)
    assert bad_timeout.value.field == "timeout"
    time.sleep(0.3)
    assert responder.requests == []


def test_closed_client_fails_waiters_and_refuses_requests(settings: Settings, codec: AvroCodec) -> None:
    client = RecommendationClient(settings, codec=codec)
    waiting = client.submit("nobody-answers", timeout=30)
    client.close()
    with pytest.raises(RecommendationError):
        waiting.result(timeout=1)
    with pytest.raises(RecommendationError):
        client.request("u")
    client.close()  # idempotent


def test_a_request_the_broker_refuses_fails_its_future_with_publish_error(
    settings: Settings, codec: AvroCodec
) -> None:
    with RecommendationClient(settings, codec=codec, producer_kwargs={"max_request_size": 200}) as small:
        pending = small.submit("u", exclude=[f"item-{n}" for n in range(50)], timeout=10)
        with pytest.raises(PublishError, match="was not accepted"):
            pending.result(timeout=5)
        assert small.pending == 0


def test_a_missing_replies_topic_is_a_clear_error(settings: Settings, codec: AvroCodec) -> None:
    missing = settings.model_copy(update={"topics": settings.topics.model_copy(update={"recommendations": "no-such"})})
    started = time.monotonic()
    with pytest.raises(PublishError, match="no-such"):
        RecommendationClient(missing, codec=codec, ready_timeout=1.0)
    assert time.monotonic() - started < 10
