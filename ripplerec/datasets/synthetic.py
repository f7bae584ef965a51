"""A synthetic behaviour stream with planted preferences, triggers and controllable shifts.

Items belong to topics and their text names the topic, so a text encoder can see it. Each user prefers a
few topics; most of their events pick an item from a preferred topic, the rest follow global popularity.
Planted *trigger* pairs (a -> b; ``a`` among the most popular items, ``b`` any other) make a user who
just touched ``a`` touch ``b`` next with a given probability. *Shifts* reassign users' preferred topics
at chosen points of the stream, for the drift and forgetting work. Everything is drawn from one seeded
generator, so the same config gives the same stream.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from ripplerec.datasets.base import Dataset
from ripplerec.models.base import ACTIONS, Interaction, Item

__all__ = ["SyntheticConfig", "synthetic_stream", "TOPIC_WORDS"]

TOPIC_WORDS: tuple[str, ...] = (
    "space", "cooking", "jazz", "football", "gardening", "history", "robots", "sailing",
    "poetry", "chess", "painting", "mountains", "finance", "horror", "birds", "cars",
    "medicine", "dance", "fishing", "comedy", "physics", "fashion", "wine", "trains",
)  # fmt: skip
_FILLER = ("guide", "story", "collection", "review", "notes", "tales", "basics", "classic", "deluxe", "new")


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of :func:`synthetic_stream`.

    ``topic_prob``: chance an event follows the user's preferences (else a popularity draw).
    ``shift_at``: fractions of the stream (0..1) where ``shift_fraction`` of users get new preferences.
    ``n_triggers``/``trigger_prob``: planted pairs a -> b and the chance b follows a.
    """

    n_users: int = 200
    n_items: int = 300
    n_topics: int = 10
    n_events: int = 20_000
    topics_per_user: int = 2
    topic_prob: float = 0.8
    popularity_skew: float = 1.0  # Zipf exponent of the global popularity draw
    shift_at: tuple[float, ...] = ()
    shift_fraction: float = 1.0
    n_triggers: int = 0
    trigger_prob: float = 0.9
    actions: tuple[str, ...] = ("view", "click", "purchase")
    start_ts: float = 1_700_000_000.0
    mean_gap_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.n_users, self.n_items, self.n_topics, self.n_events) < 1:
            raise ValueError("n_users, n_items, n_topics and n_events must be >= 1")
        if self.n_topics > len(TOPIC_WORDS):
            raise ValueError(f"n_topics must be <= {len(TOPIC_WORDS)}")
        if not 1 <= self.topics_per_user <= self.n_topics:
            raise ValueError("topics_per_user must be between 1 and n_topics")
        for name in ("topic_prob", "shift_fraction", "trigger_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if any(not 0.0 < point < 1.0 for point in self.shift_at):
            raise ValueError("shift_at holds fractions of the stream, each in (0, 1)")
        if 2 * self.n_triggers > self.n_items:
            raise ValueError("n_triggers pairs need 2 * n_triggers <= n_items")
        unknown = set(self.actions) - set(ACTIONS)
        if unknown or not self.actions:
            raise ValueError(f"actions must be a non-empty subset of {ACTIONS}, not {sorted(unknown)}")


def synthetic_stream(config: SyntheticConfig | None = None) -> Dataset:
    """Generate the catalog and stream described by ``config``.

    ``truth`` holds ``item_topic`` (item -> topic), ``user_topics`` (user -> topics before the first
    shift), ``shifts`` (event indexes where preferences changed, with the new ``user_topics`` after each)
    and ``triggers`` (list of (a, b) item pairs).
    """
    config = config or SyntheticConfig()
    rng = random.Random(config.seed)
    item_ids = [f"i{n}" for n in range(config.n_items)]
    item_topic = {item: n % config.n_topics for n, item in enumerate(item_ids)}
    rng.shuffle(item_ids)
    by_topic: dict[int, list[str]] = {t: [] for t in range(config.n_topics)}
    for item in item_ids:
        by_topic[item_topic[item]].append(item)
    items = []
    for item in sorted(item_ids, key=lambda i: int(i[1:])):
        word = TOPIC_WORDS[item_topic[item]]
        filler = rng.sample(_FILLER, 2)
        title = f"{word.title()} {filler[0]} {item[1:]}"
        text = f"{title}: a {filler[1]} about {word}."
        items.append(Item(item, title, text, {"topic": word}))

    popularity_weights = [1.0 / (rank + 1) ** config.popularity_skew for rank in range(config.n_items)]
    # popular items within a topic keep the global order, so preferences and popularity mix
    topic_weights = {
        t: [popularity_weights[item_ids.index(item)] for item in members] for t, members in by_topic.items()
    }
    users = [f"u{n}" for n in range(config.n_users)]

    def draw_topics() -> dict[str, list[int]]:
        return {u: rng.sample(range(config.n_topics), config.topics_per_user) for u in users}

    user_topics = draw_topics()
    truth_topics = {u: list(ts) for u, ts in user_topics.items()}
    triggers: list[tuple[str, str]] = []
    # triggers are the most popular items (so the pattern shows up often), targets are drawn from the rest
    targets = rng.sample(item_ids[config.n_triggers :], config.n_triggers)
    for n in range(config.n_triggers):
        triggers.append((item_ids[n], targets[n]))
    trigger_of = dict(triggers)

    shift_points = sorted(int(point * config.n_events) for point in config.shift_at)
    shifts: list[dict[str, object]] = []
    last_item: dict[str, str] = {}
    interactions: list[Interaction] = []
    ts = config.start_ts
    for n in range(config.n_events):
        if shift_points and n == shift_points[0]:
            shift_points.pop(0)
            moved = rng.sample(users, round(config.shift_fraction * len(users)))
            fresh = draw_topics()
            for user in moved:
                user_topics[user] = fresh[user]
            shifts.append({"at": n, "user_topics": {u: list(t) for u, t in user_topics.items()}})
        user = users[rng.randrange(len(users))]
        previous = last_item.get(user)
        if previous in trigger_of and rng.random() < config.trigger_prob:
            item = trigger_of[previous]
        elif rng.random() < config.topic_prob:
            topic = rng.choice(user_topics[user])
            item = rng.choices(by_topic[topic], topic_weights[topic])[0]
        else:
            item = rng.choices(item_ids, popularity_weights)[0]
        last_item[user] = item
        action = rng.choice(config.actions)
        ts += rng.expovariate(1.0 / config.mean_gap_s)
        interactions.append(Interaction(user, item, action, None, round(ts, 3)))
    truth: dict[str, object] = {
        "config": asdict(config),
        "item_topic": dict(item_topic),
        "user_topics": truth_topics,
        "shifts": shifts,
        "triggers": triggers,
    }
    return Dataset("synthetic", items, interactions, truth=truth)
