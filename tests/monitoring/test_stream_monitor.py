"""The monitor's pure core: detectors by name, watches, follow-through, windows and alerts."""

from __future__ import annotations

import copy
import random

import pytest

from ripplerec.config import DriftRule, MonitorSettings, Settings
from ripplerec.monitoring import DriftWatch, FollowThrough, StreamMonitor
from ripplerec.monitoring.detectors import BINARY, CONTINUOUS, DETECTORS, make_detector
from ripplerec.monitoring.stream_monitor import entropy_bits, top_share
from ripplerec.schemas import AvroCodec


def test_every_detector_builds_and_reads_params() -> None:
    assert set(DETECTORS) == BINARY | CONTINUOUS
    for kind in DETECTORS:
        make_detector(kind)
    assert make_detector("adwin", {"delta": 0.01, "clock": 1.0}).clock == 1
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("cusum")
    with pytest.raises(ValueError, match="bad parameters"):
        make_detector("ddm", {"nope": 1})


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_same_seed_same_alarms(kind: str) -> None:
    rng = random.Random(5)
    values: list[float] = [rng.random() < (0.2 if n < 1000 else 0.6) for n in range(2000)]
    if kind in CONTINUOUS:
        values = [rng.gauss(0.0 if n < 1000 else 1.0, 1.0) for n in range(2000)]

    def alarms() -> list[int]:
        watch = DriftWatch("m", kind, {"clock": 1} if kind == "adwin" else {}, cooldown=0, seed=3)
        return [n for n, v in enumerate(values) if watch.update(float(v), n) is not None]

    assert alarms() == alarms()


def test_watch_direction_cooldown_and_quiet_period() -> None:
    def feed(watch: DriftWatch, start: int, value: float, n: int) -> list[int]:
        return [p for p in range(start, start + n) if watch.update(value, p) is not None]

    up = DriftWatch("miss", "ddm", direction="up", cooldown=1_000)
    assert feed(up, 0, 0.0, 500) == []
    first = feed(up, 500, 1.0, 100)
    assert len(first) == 1  # one alert, then the cool-down
    down = DriftWatch("miss", "hddm_a", {"two_sided_test": True}, direction="down", cooldown=0)
    feed(down, 0, 1.0, 500)
    assert feed(down, 500, 0.0, 300)  # a fall is news for a "down" metric
    wrong_way = DriftWatch("miss", "hddm_a", {"two_sided_test": True}, direction="up", cooldown=0)
    feed(wrong_way, 0, 1.0, 500)
    assert feed(wrong_way, 500, 0.0, 300) == []
    quiet = DriftWatch("miss", "ddm", direction="up", cooldown=0, quiet_until=10_000)
    feed(quiet, 0, 0.0, 500)
    assert feed(quiet, 500, 1.0, 100) == []


def test_follow_through_resolves_per_user() -> None:
    tracker = FollowThrough(within_events=2, within_s=10.0)
    tracker.recommend("a", ["x", "y"], "v1", now=0.0)
    tracker.recommend("b", ["x"], "v2", now=0.0)
    assert tracker.event("a", "q", 1.0) is None
    assert tracker.event("a", "r", 2.0) == ("v1", False) or tracker.event("a", "r", 2.0) is None
    assert tracker.event("b", "x", 3.0).followed  # type: ignore[union-attr]
    tracker.recommend("c", ["x"], "v2", now=5.0)
    assert tracker.expire(100.0) == [] and tracker.unresolved == 1  # c never came back
    assert len(tracker) == 0


def test_entropy_and_top_share() -> None:
    assert entropy_bits([]) == 0.0 and entropy_bits([7]) == 0.0
    assert entropy_bits([1, 1]) == pytest.approx(1.0)
    assert top_share([], 1) == 0.0 and top_share([1, 1, 2], 2) == pytest.approx(0.75)


def _events(n: int, start: int, users: int, pick) -> list[dict]:
    rng = random.Random(start)
    return [{"user_id": f"u{rng.randrange(users)}", "item_id": pick(rng), "action": rng.choice(["view", "click"]),
             "ts": 1_000 * (start + i)} for i in range(n)]


def test_a_preference_shift_raises_a_novelty_alert_and_nothing_before() -> None:
    settings = MonitorSettings(grace_events=2_000, window_events=200)
    monitor = StreamMonitor(settings)
    before = _events(8_000, 0, 50, lambda r: f"i{r.randrange(20)}")
    given = copy.deepcopy(before)
    assert monitor.observe_events(before, now=1.0) == []
    assert before == given, "inputs are not mutated"
    alerts = monitor.observe_events(_events(2_000, 8_000, 50, lambda r: f"j{r.randrange(200)}"), now=2.0)
    assert alerts, "an item-novelty jump must be detected"
    record = alerts[0].record()
    assert record["metric"] in ("item_novelty", "new_item_share", "item_novelty_share")
    assert record["events_seen"] > 8_000 and record["window"]["mean_after"] > record["window"]["mean_before"]
    codec = AvroCodec()
    assert codec.decode("DriftAlert", codec.encode("DriftAlert", record)) == record
    snap = monitor.snapshot()
    assert snap["events_seen"] == 10_000 and snap["alerts"] and snap["top_items"]


def test_recommendations_model_updates_and_ticks() -> None:
    monitor = StreamMonitor(MonitorSettings(rec_window=10, follow_events=1))
    recs = [{"user_id": f"u{n}", "model_version": "v1", "error": None,
             "items": [{"item_id": "a", "score": 0.5}, {"item_id": "b", "score": 0.25}]} for n in range(10)]
    monitor.observe_recommendations(recs, now=0.0)
    monitor.observe_events([{"user_id": f"u{n}", "item_id": "a" if n < 4 else "z", "action": "view", "ts": n}
                            for n in range(10)], now=1.0)
    assert monitor.follow_by_version["v1"] == [4, 10]
    monitor.observe_recommendations(recs, now=2.0)
    assert monitor.window_values["follow_through_share"] == pytest.approx(0.4)
    assert monitor.window_values["score_mean"] == pytest.approx(0.375)
    monitor.observe_model_update({"version": "v2", "metrics": {"ndcg@10": 0.1, "loss": 0.5}, "examples_seen": 9},
                                 now=3.0)
    assert monitor.serving_version == "v2" and monitor.trainer_by_version["v2"]["examples_seen"] == 9
    monitor.tick(10.0)
    monitor.observe_events([{"user_id": "x", "item_id": "y", "action": "view", "ts": 1}] * 5, now=11.0)
    monitor.observe_dead_letters(2)
    monitor.tick(12.0)
    assert monitor.window_values["events_per_second"] == pytest.approx(2.5)
    assert monitor.window_values["dead_letters_per_second"] == pytest.approx(1.0)


def test_rules_from_the_environment_merge_over_defaults(monkeypatch) -> None:
    monkeypatch.setenv("RIPPLEREC_MONITOR__RULES", '{"item_novelty": {"detector": "ddm", "direction": "up"}}')
    monkeypatch.setenv("RIPPLEREC_MONITOR__COOLDOWN_EVENTS", "123")
    settings = Settings()
    assert settings.monitor.cooldown_events == 123
    assert settings.monitor.rules["item_novelty"] == DriftRule(detector="ddm", direction="up")
    assert settings.monitor.rules["follow_through_miss"].detector == "hddm_a"  # the defaults stay


def _old_drift_alert_schema() -> dict:
    from ripplerec.schemas.loader import load_schema

    schema = load_schema("DriftAlert")
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in ("events_seen", "event_ts", "model_version")]
    return schema


OLD_ALERT = {"metric": "item_novelty", "detector": "HDDMA", "value": 1.0, "window": {"mean_before": 0.4}, "ts": 5,
             "message": ""}


def test_drift_alert_new_reader_reads_old_alerts() -> None:
    from ripplerec.schemas.registry import MemorySchemaRegistry

    registry = MemorySchemaRegistry()
    old = AvroCodec(registry, schemas={"DriftAlert": _old_drift_alert_schema()})
    new = AvroCodec(registry)
    assert new.decode("DriftAlert", old.encode("DriftAlert", OLD_ALERT)) == {
        **OLD_ALERT, "events_seen": None, "event_ts": None, "model_version": None}


def test_drift_alert_old_reader_reads_new_alerts(tmp_path) -> None:
    from ripplerec.schemas.registry import FileSchemaRegistry

    path = tmp_path / "schemas.json"
    data = AvroCodec(FileSchemaRegistry(path)).encode(
        "DriftAlert", {**OLD_ALERT, "events_seen": 7, "event_ts": 8, "model_version": "v2"})
    old = AvroCodec(FileSchemaRegistry(path), schemas={"DriftAlert": _old_drift_alert_schema()})
    assert old.decode("DriftAlert", data) == OLD_ALERT


def test_prometheus_series_follow_the_monitor_and_keep_few_versions() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from ripplerec.monitoring import parse_metrics
    from ripplerec.monitoring.monitor_metrics import MonitorMetrics

    registry = CollectorRegistry()
    exported = MonitorMetrics(registry)
    monitor = StreamMonitor(MonitorSettings(rec_window=10, follow_events=1, keep_versions=2))
    for n in range(3):
        version = f"v{n}"
        monitor.observe_model_update({"version": version, "metrics": {"ndcg@10": 0.1 * n, "loss": 1.0}}, now=n)
        monitor.observe_recommendations([{"user_id": "u", "model_version": version, "error": None,
                                          "items": [{"item_id": "a", "score": 1.0}]}], now=n)
        monitor.observe_events([{"user_id": "u", "item_id": "a", "action": "view", "ts": n}], now=n)
        exported.update(monitor)
    exported.count_events(["view", "view", "click"])
    metrics = parse_metrics(generate_latest(registry).decode())
    assert metrics["ripplerec_recommendations_followed_total{model_version=v2}"] == 1
    assert "ripplerec_recommendations_followed_total{model_version=v0}" not in metrics  # trimmed
    assert metrics["ripplerec_trainer_ndcg_at_10{model_version=v2}"] == pytest.approx(0.2)
    assert "ripplerec_trainer_ndcg_at_10{model_version=v0}" not in metrics
    assert metrics["ripplerec_model_version_info{model_version=v2}"] == 1
    assert "ripplerec_model_version_info{model_version=v1}" not in metrics
    assert metrics["ripplerec_monitor_events_total{action=view}"] == 2


@pytest.mark.parametrize("two_sided", [False, True])
def test_our_hddm_a_raises_rivers_alarms(two_sided: bool) -> None:
    from river.drift.binary import HDDMA as RiverHDDMA

    from ripplerec.monitoring.hddm_a import HDDMA

    rng = random.Random(11)
    stream = [int(rng.random() < p) for p in [0.3] * 3000 + [0.6] * 2000 + [0.1] * 3000 + [0.5] * 2000]
    ours, river = HDDMA(two_sided_test=two_sided), RiverHDDMA(two_sided_test=two_sided)

    def alarms_of(detector) -> list[int]:
        found = []
        for n, x in enumerate(stream):
            detector.update(x)
            if detector.drift_detected:
                found.append(n)
        return found

    alarms = [alarms_of(ours), alarms_of(river)]
    assert alarms[0] == alarms[1] and len(alarms[0]) >= 2


@pytest.mark.parametrize("two_sided", [False, True])
def test_hddm_a_batch_update_raises_the_same_alarms(two_sided: bool) -> None:
    from ripplerec.monitoring.hddm_a import HDDMA

    rng = random.Random(12)
    stream = [int(rng.random() < p) for p in [0.3] * 3000 + [0.6] * 2000 + [0.1] * 3000 + [0.5] * 2000]
    one, many = HDDMA(two_sided_test=two_sided), HDDMA(two_sided_test=two_sided)
    alarms, batch_alarms, start = [], [], 0
    for n, x in enumerate(stream):
        one.update(x)
        alarms += [n] if one.drift_detected else []
    while start < len(stream):
        chunk = stream[start:start + rng.randrange(1, 700)]
        batch_alarms += [start + i for i in many.update_many(chunk)]
        start += len(chunk)
        assert many.drift_detected == (start - 1 in alarms)
    assert batch_alarms == alarms and len(alarms) >= 2
    assert (many.warning_detected, many._z.get(), many._x_min.n) == (one.warning_detected, one._z.get(), one._x_min.n)


@pytest.mark.parametrize("kind", ["hddm_a", "ddm"])
def test_watch_batch_update_gives_the_same_detections(kind: str) -> None:
    rng = random.Random(13)
    values = [float(rng.random() < (0.2 if n < 3000 else 0.7)) for n in range(6000)]

    def watch() -> DriftWatch:
        return DriftWatch("m", kind, direction="up", cooldown=200, quiet_until=1_000)

    one, many = watch(), watch()
    expected = [d for n, v in enumerate(values) if (d := one.update(v, n)) is not None]
    found, start = [], 0
    while start < len(values):
        chunk = values[start:start + rng.randrange(1, 500)]
        found += many.update_many(chunk, start)
        start += len(chunk)
    assert found == expected and expected
    assert many.updates == one.updates and list(many._values) == list(one._values)


def test_events_in_batches_give_what_events_one_at_a_time_give() -> None:
    """Batches (split at window ends inside) against single events: the same alerts, in the same
    order with the same positions and event times, and the same state."""
    sensitive = {"detector": "hddm_a", "params": {"drift_confidence": 0.05, "two_sided_test": 1}}
    rules = {"item_novelty": sensitive, "follow_through_miss": sensitive,
             "action_share": {"detector": "page_hinkley", "params": {"threshold": 0.1}}}
    settings = MonitorSettings(grace_events=300, cooldown_events=0, window_events=100, follow_events=1,
                               max_users=55, rules=rules)
    events: list[dict] = []
    for block in range(20):  # novelty and follow-through alternate, so alerts of both come close together
        events += _events(400, 400 * block, 60, (lambda r: f"i{r.randrange(20)}") if block % 2
                          else (lambda r: f"j{r.randrange(3000)}"))
    upcoming, later = [""] * len(events), {}  # each event's user's next item: followed when recommended
    for n in range(len(events) - 1, -1, -1):
        upcoming[n] = later.get(events[n]["user_id"], "x")
        later[events[n]["user_id"]] = events[n]["item_id"]
    cuts = sorted(random.Random(1).sample(range(1, len(events)), 80))

    def feed(one_at_a_time: bool) -> tuple[list[dict], dict]:
        monitor, records = StreamMonitor(settings), []
        for start, end in zip([0, *cuts], [*cuts, len(events)]):
            chunk = events[start:end]
            for part in [[e] for e in chunk] if one_at_a_time else [chunk]:
                records += [a.record() for a in monitor.observe_events(part, now=float(end))]
            recs = [{"user_id": events[n]["user_id"], "model_version": "v", "error": None,
                     "items": [{"item_id": upcoming[n] if (n // 600) % 2 else "x", "score": 1.0}]}
                    for n in range(max(start, end - 40), end)]
            records += [a.record() for a in monitor.observe_recommendations(recs, now=float(end))]
        snap = monitor.snapshot()
        return records, {k: v for k, v in snap.items() if k != "top_items"}

    records, state = feed(one_at_a_time=False)
    assert (records, state) == feed(one_at_a_time=True)
    assert {r["metric"] for r in records} >= {"item_novelty", "follow_through_miss"}
