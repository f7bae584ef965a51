"""The evaluation's models by name: an alias of :mod:`ripplerec.models.zoo`, where model configuration lives."""

from ripplerec.models.zoo import MODEL_NAMES, ZooConfig, build_models, scorer_configs

__all__ = ["MODEL_NAMES", "ZooConfig", "build_models", "scorer_configs"]
