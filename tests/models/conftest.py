"""Small deterministic fixtures for the model tests: a synthetic stream and a hashed text encoder."""

from __future__ import annotations

import pytest

from ripplerec.datasets.base import Dataset
from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream


@pytest.fixture(scope="session")
def small_stream() -> Dataset:
    return synthetic_stream(SyntheticConfig(n_users=30, n_items=60, n_topics=6, n_events=600, seed=3))
