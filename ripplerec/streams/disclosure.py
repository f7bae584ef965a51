"""How much of a user's history a recommendation reveals (``RIPPLEREC_INFLUENCES``).

A recommended item's influences are the user's past behaviours that led to it. Whoever reads
``ripple.recommendations`` (every consumer of the topic, not only the asking app) learns them, so
the scorer trims them with :func:`disclose` right before a recommendation is encoded:

* ``full``: every influence as the scorer made it (item id, action, time, weight, delta);
* ``items``: only which past items influenced the recommendation: ``action`` is ``""`` and ``ts`` 0
  (withheld; the schema has no room for absent fields), weight and delta stay, and an item the user
  met several times appears once (its first influence in the scorer's order), so how often does
  not show either;
* ``off``: no influences at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ripplerec.schemas.records import InfluenceRecord, RecommendedItem

__all__ = ["Disclosure", "DISCLOSURES", "disclose"]

Disclosure = Literal["full", "items", "off"]
DISCLOSURES: tuple[str, ...] = ("full", "items", "off")


def disclose(items: Sequence[RecommendedItem], level: str) -> list[RecommendedItem]:
    """``items`` with their influences trimmed to ``level`` (``full``, ``items`` or ``off``).

    Pure: the input is not mutated (``full`` returns its items as they are).

    >>> item = {"item_id": "b", "score": 1.0, "influences": [
    ...     {"item_id": "a", "action": "purchase", "ts": 874724710000, "weight": 0.7, "delta": 0.4},
    ...     {"item_id": "a", "action": "view", "ts": 874724700000, "weight": 0.3, "delta": 0.1}]}
    >>> disclose([item], "items")[0]["influences"]
    [{'item_id': 'a', 'action': '', 'ts': 0, 'weight': 0.7, 'delta': 0.4}]
    >>> disclose([item], "off")[0]["influences"]
    []
    """
    if level == "full":
        return list(items)
    if level == "off":
        return [{"item_id": i["item_id"], "score": i["score"], "influences": []} for i in items]
    if level == "items":
        return [{"item_id": i["item_id"], "score": i["score"], "influences": _items_only(i["influences"])}
                for i in items]
    raise ValueError(f"unknown influences level {level!r}; one of {', '.join(DISCLOSURES)}")


def _items_only(influences: Sequence[InfluenceRecord]) -> list[InfluenceRecord]:
    out: list[InfluenceRecord] = []
    seen: set[str] = set()
    for influence in influences:
        item_id = influence["item_id"]
        if item_id not in seen:
            seen.add(item_id)
            out.append({"item_id": item_id, "action": "", "ts": 0,
                        "weight": influence["weight"], "delta": influence["delta"]})
    return out
