"""The pure profile functions: deterministic, inputs untouched, duplicates change nothing."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from ripplerec.profiles import BatchParams, Profile, StoreState, apply_batch, apply_events, decode_entry, encode_entry
from ripplerec.profiles.profile import logaddexp2

ACTIONS = ["view", "click", "cart", "purchase", "rate", "skip"]

events_strategy = st.lists(
    st.fixed_dictionaries({
        "event_id": st.sampled_from([f"e{i}" for i in range(30)]),
        "user_id": st.sampled_from(["a", "b", "c"]),
        "item_id": st.sampled_from([f"i{i}" for i in range(8)]),
        "action": st.sampled_from(ACTIONS),
        "value": st.one_of(st.none(), st.floats(1, 5)),
        "ts": st.integers(0, 10**13),
        "context": st.just({}),
    }),
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
