"""Reads the ``.avsc`` files shipped in this package: the single source of truth for every topic."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["SCHEMA_FILES", "load_schema", "load_schemas", "full_name"]

#: Record name -> file, in dependency order (a schema may reference any earlier one by full name).
SCHEMA_FILES: dict[str, str] = {
    "BehaviorEvent": "behavior_event.avsc",
    "EventBatch": "event_batch.avsc",
    "ItemUpsert": "item_upsert.avsc",
    "RecommendationRequest": "recommendation_request.avsc",
    "Recommendation": "recommendation.avsc",
    "TrainingExample": "training_example.avsc",
    "TrainingBatch": "training_batch.avsc",
    "ModelUpdate": "model_update.avsc",
    "DriftAlert": "drift_alert.avsc",
    "DeadLetter": "dead_letter.avsc",
}


def full_name(schema: dict[str, Any]) -> str:
    """``namespace.name`` of a record schema.

    >>> full_name({"type": "record", "name": "A", "namespace": "x.y", "fields": []})
    'x.y.A'
    """
    namespace = schema.get("namespace")
    return f"{namespace}.{schema['name']}" if namespace else str(schema["name"])


def _inline_references(node: Any, known: dict[str, dict[str, Any]], defined: set[str]) -> Any:
    """Replace references to other files' records by their definitions, so each schema stands alone."""
    if isinstance(node, str):
        if node in known and node not in defined:
            defined.add(node)
            return _inline_references(json.loads(json.dumps(known[node])), known, defined)
        return node
    if isinstance(node, list):
        return [_inline_references(n, known, defined) for n in node]
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed") and "name" in node:
            name = node["name"] if "." in node["name"] else full_name(node) if node.get("namespace") else None
            if name:
                defined.add(name)
        return {k: (_inline_references(v, known, defined) if k in ("type", "items", "values", "fields")
                    else v) for k, v in node.items()}
    return node


@lru_cache(maxsize=1)
def _load_all() -> dict[str, dict[str, Any]]:
    package = resources.files("ripplerec.schemas")
    by_full_name: dict[str, dict[str, Any]] = {}
    by_name: dict[str, dict[str, Any]] = {}
    for name, filename in SCHEMA_FILES.items():
        raw = json.loads(package.joinpath(filename).read_text(encoding="utf-8"))
        schema = _inline_references(raw, by_full_name, set())
        by_full_name[full_name(raw)] = raw
        by_name[name] = schema
    return by_name


def load_schema(name: str) -> dict[str, Any]:
    """The self-contained schema for record ``name`` (e.g. ``"BehaviorEvent"``); a fresh copy."""
    schemas = _load_all()
    if name not in schemas:
        raise KeyError(f"no schema named {name!r}; known: {', '.join(schemas)}")
    copy: dict[str, Any] = json.loads(json.dumps(schemas[name]))
    return copy


def load_schemas() -> dict[str, dict[str, Any]]:
    """Every shipped schema by record name."""
    return {name: load_schema(name) for name in SCHEMA_FILES}
