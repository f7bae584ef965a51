"""The MovieLens-100K reader and the synthetic stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from ripplerec.datasets.base import Dataset, DatasetNotFoundError
from ripplerec.datasets.movielens import INSTALL_HINT, find_movielens_100k, load_movielens_100k
from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream
from ripplerec.models.base import Interaction


@pytest.fixture(scope="module")
def movielens() -> Dataset:
    # `make test` installs the recbole wheel; a missing dataset fails here with the install hint.
    return load_movielens_100k()


def test_movielens_counts_and_order(movielens: Dataset) -> None:
    assert len(movielens.items) == 1682 and len(movielens.interactions) == 100_000
    assert len({e.user_id for e in movielens.interactions}) == 943 and len(movielens.users) == 943
    timestamps = [e.ts for e in movielens.interactions]
    assert timestamps == sorted(timestamps)
    assert {e.action for e in movielens.interactions} == {"rate"}
    assert {e.value for e in movielens.interactions} == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_movielens_item_text(movielens: Dataset) -> None:
    by_id = {item.item_id: item for item in movielens.items}
    toy_story = by_id["1"]
    assert toy_story.title == "Toy Story"
    assert toy_story.text.startswith("Toy Story (1995). Genres: Animation, Children's, Comedy.")
    assert "Same " in toy_story.text  # knowledge-graph neighbours rendered as text
    assert by_id["12"].title == "The Usual Suspects"
    assert any(word == "director" for word, _ in toy_story.relations) or toy_story.relations
    assert "Same " not in load_movielens_100k(neighbours_per_relation=0).items[0].text


def test_missing_files_say_how_to_install(tmp_path: Path) -> None:
    (tmp_path / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    with pytest.raises(DatasetNotFoundError) as caught:
        load_movielens_100k(tmp_path)
    message = str(caught.value)
    assert "lacks ml-100k.item, ml-100k.user, ml-100k.kg, ml-100k.link." in message
    assert INSTALL_HINT in message and "pip install --no-deps recbole==1.2.1" in message


def test_missing_recbole_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps recbole==1\.2\.1"):
        find_movielens_100k()


def test_unsorted_streams_are_refused() -> None:
    events = [Interaction("u", "a", "view", None, 2.0), Interaction("u", "b", "view", None, 1.0)]
    with pytest.raises(ValueError, match="sorted"):
        Dataset("x", [], events)


def test_synthetic_stream_is_reproducible_and_plants_what_it_says() -> None:
    config = SyntheticConfig(n_users=20, n_items=50, n_topics=5, n_events=2000, n_triggers=2, shift_at=(0.5,), seed=4)
    first, second = synthetic_stream(config), synthetic_stream(config)
    assert first.interactions == second.interactions and first.items == second.items
    assert synthetic_stream(SyntheticConfig(seed=5, n_events=50)).interactions != first.interactions[:50]
    topic = first.truth["item_topic"]
    assert all(f"about {item.attributes['topic']}" in item.text for item in first.items)
    # preferences: most of a user's events before the shift are in their topics
    preferred = first.truth["user_topics"]
    early = first.interactions[:1000]
    share = sum(topic[e.item_id] in preferred[e.user_id] for e in early) / len(early)
    assert share > 0.75
    assert first.truth["shifts"][0]["at"] == 1000
    # triggers: a -> b follows most of the time
    follows, total, last = 0, 0, {}
    triggers = dict(first.truth["triggers"])
    for event in first.interactions:
        if last.get(event.user_id) in triggers:
            total += 1
            follows += event.item_id == triggers[last[event.user_id]]
        last[event.user_id] = event.item_id
    assert total > 20 and follows / total > 0.8


@pytest.mark.parametrize(
    "bad",
    [{"n_users": 0}, {"topic_prob": 1.5}, {"shift_at": (1.0,)}, {"n_topics": 99}, {"actions": ("teleport",)}],
)
def test_synthetic_config_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)  # type: ignore[arg-type]
