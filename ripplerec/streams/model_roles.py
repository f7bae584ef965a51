"""Registers the agents that move model versions: the trainer, and the scorers' following of its versions.

``create_app`` calls :func:`register_model_roles` for the ``trainer`` and ``scorer`` groups:

* ``trainer`` (``--role trainer``): the trainer agent on ``ripple.training``
  (:mod:`ripplerec.streams.trainer`). In ``--role all`` it runs only when the worker serves the
  transformer (``RIPPLEREC_SCORER=transformer``): the heuristic has nothing to train;
* ``scorer`` with the transformer: a task that follows ``ripple.model-updates`` and swaps each
  announced head version in (:meth:`ripplerec.streams.scoring.VersionedModelBackend.follow`), and
  keeps the catalog of the scorer's model up to date.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from typing import Any

from ripplerec.config import Settings

__all__ = ["register_model_roles"]

log = logging.getLogger(__name__)


def register_model_roles(
    app: Any, runtime: Any, settings: Settings, groups: Set[str], *, all_role: bool = False
) -> None:
    """Register the trainer agent and the version follower that ``groups`` ask for."""
    if "trainer" in groups:
        if all_role and settings.scorer != "transformer":
            log.info("role all: no trainer, the worker serves the %s scorer (--role trainer trains anyway)",
                     settings.scorer)
        else:
            from ripplerec.streams.trainer import register_trainer

            register_trainer(app, runtime, settings)
    if "scorer" in groups and settings.scorer == "transformer":
        from ripplerec.streams.scoring import register_version_follower

        register_version_follower(app, runtime, settings)
