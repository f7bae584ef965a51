"""The pure profile functions: deterministic, inputs untouched, duplicates change nothing."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from ripplerec.profiles import BatchParams, Profile, StoreState, apply_batch, apply_events, decode_entry, encode_entry
from ripplerec.profiles.profile import event_id_digest, logaddexp2, source_position

ACTIONS = ["view", "click", "cart", "purchase", "rate", "skip"]

# An event id belongs to one user (ids are unique; a resend repeats the user).
events_strategy = st.lists(
    st.integers(0, 29).flatmap(lambda k: st.fixed_dictionaries({
        "event_id": st.just(f"e{k}"),
        "user_id": st.just("abc"[k % 3]),
        "item_id": st.sampled_from([f"i{i}" for i in range(8)]),
        "action": st.sampled_from(ACTIONS),
        "value": st.one_of(st.none(), st.floats(1, 5)),
        "ts": st.integers(0, 10**13),
        "context": st.just({}),
    })),
    max_size=60,
)


def test_apply_events_caps_history_counts_and_keeps_the_latest_timestamp() -> None:
    events = [{"item_id": f"i{n}", "action": "view", "value": None, "ts": 100 - n} for n in range(5)]
    profile = apply_events(Profile("u"), events, now_ms=7, history_length=3)
    assert [e.item_id for e in profile.history] == ["i2", "i3", "i4"]
    assert profile.counts == {"view": 5} and profile.events == 5
    assert profile.last_seen_ms == 100 and profile.updated_ms == 7
    assert profile.consumed == {f"i{n}" for n in range(5)}


def test_no_events_leave_the_profile_as_it_was() -> None:
    profile = Profile("u", counts={"view": 1}, events=1)
    assert apply_events(profile, [], now_ms=5) is profile


def test_entries_round_trip() -> None:
    for value in (None, 4.0, 0.1, 1e-300):
        assert decode_entry(encode_entry("i", "rate", value, 12)) == ("i", "rate", value, 12)


def test_logaddexp2_is_symmetric_and_exact_on_equal_inputs() -> None:
    assert logaddexp2(1.0, 5.0) == logaddexp2(5.0, 1.0)
    assert logaddexp2(10.0, 10.0) == 11.0


@settings(max_examples=60, deadline=None)
@given(events_strategy, st.integers(1, 5))
def test_apply_batch_is_deterministic_idempotent_and_does_not_mutate(events, split) -> None:
    params = BatchParams(history_length=4, half_life_s=3600.0, cooccurrence_window=2)
    frozen = copy.deepcopy(events)
    once, flags = apply_batch(StoreState(), events, 1, params)
    assert events == frozen
    again, _ = apply_batch(StoreState(), events, 1, params)
    assert once == again
    # a replay of everything changes nothing
    replayed, replay_flags = apply_batch(once, events, 1, params)
    assert not any(replay_flags) and replayed.profiles == once.profiles and replayed.items == once.items
    # duplicates are counted once
    assert sum(flags) == len({e["event_id"] for e in events})
    assert sum(p.events for p in once.profiles.values()) == sum(flags)
    # batch boundaries do not change profiles or counts
    state = StoreState()
    cut = len(events) // split or 1
    for start in range(0, len(events), cut):
        state, _ = apply_batch(state, events[start : start + cut], 1, params)
    assert state.profiles == once.profiles
    assert state.items.popularity == once.items.popularity
    assert state.items.cooccurrence == once.items.cooccurrence


def _view(n: int, user: str = "u", event_id: str | None = None) -> dict:
    return {"event_id": event_id or f"e{n}", "user_id": user, "item_id": f"i{n % 5}", "action": "view",
            "value": None, "ts": 1_000 + n, "context": {}}


def _digests(*event_ids: str) -> tuple[str, ...]:
    return tuple(event_id_digest(e) for e in event_ids)


def test_event_ids_are_kept_as_fixed_width_digests() -> None:
    assert len({event_id_digest(f"0190a2b3-c4d5-7e6f-8a9b-{n:012x}") for n in range(10_000)}) == 10_000
    assert {len(event_id_digest(e)) for e in ("", "x", "é" * 200)} == {12}


def test_sources_name_the_partition_offset_and_place_in_the_message() -> None:
    assert source_position("3:120:7") == ("3", 120, 7)
    assert source_position("3:120") == ("3", 120, 0)


@settings(max_examples=60, deadline=None)
@given(events_strategy, st.integers(1, 7), st.integers(0, 60))
def test_a_redelivered_stream_changes_nothing_however_it_is_cut(events, envelope, crash) -> None:
    """Messages of up to ``envelope`` events on one partition; a crash after ``crash`` events
    redelivers from the last committed message, cut into other batches: nothing counts twice."""
    params = BatchParams(history_length=4, half_life_s=3600.0, cooccurrence_window=2)
    sources = [f"0:{10 + n // envelope}:{n % envelope}" for n in range(len(events))]
    once, flags = apply_batch(StoreState(), events, 1, params, sources)
    assert flags == apply_batch(StoreState(), events, 1, params)[1]  # no redeliveries: the ids decide
    crash = min(crash, len(events))
    state, _ = apply_batch(StoreState(), events[:crash], 1, params, sources[:crash])
    committed = crash // envelope * envelope  # the consumer restarts at the first message not done
    for start in range(committed, len(events), 3):
        state, again = apply_batch(state, events[start : start + 3], 1, params, sources[start : start + 3])
        assert not any(again[: max(0, crash - start)])  # everything applied before the crash is dropped
    assert state.profiles == once.profiles and state.recent_event_ids == once.recent_event_ids
    assert state.items.popularity == once.items.popularity
    assert state.items.cooccurrence == once.items.cooccurrence
    assert state.applied == ({"0": source_position(sources[-1])[1:]} if events else {})


def test_an_envelope_cut_across_two_calls_and_redelivered_counts_once() -> None:
    params = BatchParams(history_length=50)
    events = [_view(n) for n in range(10)]
    sources = ["2:7"] + [f"2:7:{n}" for n in range(1, 10)]
    state, first = apply_batch(StoreState(), events[:6], 1, params, sources[:6])
    state, second = apply_batch(state, events[6:], 1, params, sources[6:])
    assert first + second == [True] * 10 and state.applied == {"2": (7, 9)}
    # redelivered after a crash, cut elsewhere: all of it was applied
    again, flags = apply_batch(state, events[:3], 2, params, sources[:3])
    again, more = apply_batch(again, events[3:], 2, params, sources[3:])
    assert flags + more == [False] * 10 and again.profiles == state.profiles and again.items == state.items


def test_a_resent_event_id_in_a_new_message_is_a_duplicate_while_among_the_users_latest() -> None:
    params = BatchParams(history_length=50, recent_event_ids=4)
    events = [_view(n) for n in range(6)]
    state, _ = apply_batch(StoreState(), events, 1, params, [f"0:{n}" for n in range(6)])
    assert state.recent_event_ids == {"u": _digests("e5", "e4", "e3", "e2")}
    # e3 resent by the app in a new message: dropped; also within one batch, and without sources
    state, flags = apply_batch(state, [events[3], _view(6), _view(6)], 1, params, ["0:6", "0:7", "0:8"])
    assert flags == [False, True, False]
    state, flags = apply_batch(state, [events[4]], 1, params)
    assert flags == [False] and state.profiles["u"].events == 7
    # documented limit: e1 is resent after more than 4 newer events of its user, so it counts again
    state, flags = apply_batch(state, [events[1]], 1, params, ["0:9"])
    assert flags == [True] and state.profiles["u"].events == 8
    assert state.recent_event_ids["u"] == _digests("e1", "e6", "e5", "e4")
    # other users' ids are theirs: the same id for another user is not a duplicate
    state, flags = apply_batch(state, [_view(6, user="v")], 1, params)
    assert flags == [True]


def test_without_recent_ids_only_redeliveries_and_the_batch_itself_are_caught() -> None:
    params = BatchParams(history_length=50, recent_event_ids=0)
    events = [_view(n) for n in range(3)]
    state, flags = apply_batch(StoreState(), events + events[:1], 1, params, ["0:0", "0:1", "0:2", "0:3"])
    assert flags == [True, True, True, False] and state.recent_event_ids == {}
    state, flags = apply_batch(state, events, 1, params, ["0:0", "0:1", "0:2"])
    assert flags == [False] * 3
    state, flags = apply_batch(state, events[:1], 1, params, ["0:4"])
    assert flags == [True]
