"""ripplerec: a streaming, online-learning recommender on Kafka and Redis.

The package root exports what an app needs; it imports neither torch nor faust.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "EventProducer",
    "RecommendationClient",
    "RecommendationConsumer",
    "DriftAlertConsumer",
    "Settings",
    "__version__",
]

_LAZY = {
    "EventProducer": "ripplerec.producers",
    "RecommendationClient": "ripplerec.consumers",
    "RecommendationConsumer": "ripplerec.consumers",
    "DriftAlertConsumer": "ripplerec.consumers",
    "Settings": "ripplerec.config",
}

if TYPE_CHECKING:  # pragma: no cover
    from ripplerec.config import Settings
    from ripplerec.consumers import DriftAlertConsumer, RecommendationClient, RecommendationConsumer
    from ripplerec.producers import EventProducer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ripplerec' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
