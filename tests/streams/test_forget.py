"""``ripplerec forget USER``: every trace of a user leaves Redis, the other users stay (issue 12).

Two users' events go through a worker (role all) in a subprocess; the CLI forgets one; then every
Redis key and value is searched for the forgotten id.
"""

from __future__ import annotations

import uuid

import pytest
from pydantic import SecretStr
from scankit import redis_dump, topic_records, where_found
from streamkit import T0, Publisher, event, make_settings, redis_profiles, wait_for
from typer.testing import CliRunner

from ripplerec.cli import app
from ripplerec.config import Settings, TopicNames, get_settings
from ripplerec.producers import EventProducer, pseudonymize
from ripplerec.streams import forgetting
from ripplerec.streams.worker import WorkerProcess, settings_to_env

pytestmark = pytest.mark.integration

KEY = "a test key for pseudonyms, 32 bytes"


@pytest.fixture(scope="module")
def running(embedded_stack, tmp_path_factory, stream_codec):
    tmp = tmp_path_factory.mktemp("forget")
    # proactive recommendations on, so each user also has a rate-limit key and requests/replies
    settings = make_settings(embedded_stack, tmp, proactive_min_events=3, proactive_interval_s=600)
    worker = WorkerProcess(settings, "all", log_path=str(tmp / "worker.log"), loglevel="info").start()
    publisher = Publisher(settings, stream_codec)
    yield settings, publisher
    publisher.close()
    worker.stop()
    assert worker.proc.returncode == 0, (tmp / "worker.log").read_text()[-3000:]


def _cli_forget(settings: Settings, *args: str) -> str:
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["forget", *args], env=settings_to_env(settings))
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return result.output


def _user_keys(settings: Settings, user: str) -> set[bytes]:
    p = settings.redis_key_prefix
    return {f"{p}:{kind}:{user}".encode() for kind in ("u", "seen", "rl")} & set(redis_dump(settings))


def _wait_ingested(settings: Settings, users: dict[str, int]) -> None:
    def done() -> bool:
        profiles = redis_profiles(settings, users)
        return all(profiles[u] is not None and profiles[u].events >= n for u, n in users.items())

    wait_for(done, 60, what=f"profiles of {sorted(users)}")
    # the proactive rate limits are set in the same script call as the profiles
    wait_for(lambda: all(len(_user_keys(settings, u)) == 3 for u in users), 10, what="rate-limit keys")


def test_forget_removes_every_trace_and_keeps_the_other_user(running):
    settings, publisher = running
    tag = uuid.uuid4().hex[:10]
    gone, kept = f"gone-{tag}", f"kept-{tag}"
    publisher.events([event(i, gone if i % 2 else kept, f"m{i % 5}") for i in range(12)])
    _wait_ingested(settings, {gone: 6, kept: 6})
    assert where_found([gone], settings, topics=False)  # it is there to find
    before = redis_profiles(settings, [kept])[kept]

    output = _cli_forget(settings, gone)

    assert where_found([gone], settings, topics=False) == []
    assert redis_profiles(settings, [gone])[gone] is None
    assert redis_profiles(settings, [kept])[kept] == before
    assert len(_user_keys(settings, kept)) == 3
    assert f"forgot {gone}" in output and "redis profiles: 3 record(s) deleted" in output
    assert "no tombstones: no compacted topic is keyed by user id" in output
    # twice is harmless
    assert "redis profiles: 0 record(s) deleted" in _cli_forget(settings, gone)


def test_forget_with_pseudonyms_takes_the_raw_id_or_the_pseudonym(running):
    settings, _ = running
    keyed = settings.model_copy(update={"pseudonymize_key": SecretStr(KEY)})
    tag = uuid.uuid4().hex[:10]
    carol, dave = f"carol-{tag}", f"dave-{tag}"
    with EventProducer(keyed) as producer:
        for i in range(8):
            producer.track(carol if i % 2 else dave, f"m{i % 5}", "click", ts=T0 + i * 1000)
    p_carol, p_dave = pseudonymize(carol, KEY), pseudonymize(dave, KEY)
    _wait_ingested(settings, {p_carol: 4, p_dave: 4})
    assert where_found([carol, dave], settings, topics=False) == []  # pseudonymised
    before = redis_profiles(settings, [p_dave])[p_dave]

    output = _cli_forget(keyed, carol)  # the raw id, hashed with the key
    assert f"forgot {p_carol}" in output and "redis profiles: 3 record(s) deleted" in output
    assert where_found([p_carol, carol], settings, topics=False) == []
    assert redis_profiles(settings, [p_dave])[p_dave] == before

    output = _cli_forget(keyed, "--pseudonym", p_dave)  # the pseudonym, as a consumer saw it
    assert "redis profiles: 3 record(s) deleted" in output
    assert where_found([p_dave], settings, topics=False) == []
    # a pseudonym given as a raw id is hashed again: the output warns
    assert "looks like a pseudonym" in _cli_forget(keyed, p_dave)


def test_forget_reaches_registered_stores_and_tombstones_user_keyed_compacted_topics(running, monkeypatch):
    settings, _ = running

    class Remembers:
        forgotten: list[str] = []

        def __init__(self, settings: Settings) -> None:
            pass

        async def forget_user(self, user_id: str) -> int:
            self.forgotten.append(user_id)
            return 7

        async def close(self) -> None:
            pass

    class UserKeyedCompacted(TopicNames):  # as if the replies topic were compacted
        def compacted(self) -> set[str]:
            return {*super().compacted(), self.recommendations}

    monkeypatch.setitem(forgetting.FORGETTERS, "replay buffer", Remembers)
    assert forgetting.user_keyed_compacted_topics(settings.topics) == []
    topics = UserKeyedCompacted(**settings.topics.model_dump())
    user = f"erin-{uuid.uuid4().hex[:10]}"

    report = forgetting.forget_user(settings.model_copy(update={"topics": topics}), user)

    assert Remembers.forgotten == [user]
    assert report.deleted == {"redis profiles": 0, "trainer (request queued)": 1, "replay buffer": 7}
    assert report.tombstones == [settings.topics.recommendations]
    records = topic_records(settings, settings.topics.recommendations)
    assert (user.encode(), None) in [(key, value) for key, value, _ in records]
