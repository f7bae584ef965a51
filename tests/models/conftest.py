"""Small deterministic fixtures for the model tests: a synthetic stream and a hashed text encoder."""

from __future__ import annotations

import pytest

from ripplerec.datasets.base import Dataset
from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream


@pytest.fixture(scope="session")
def small_stream() -> Dataset:
    return synthetic_stream(SyntheticConfig(n_users=30, n_items=60, n_topics=6, n_events=600, seed=3))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Scores are bitwise reproducible with one intra-op thread (torch's parallel scatter-add in embedding
    backward may round differently from run to run with more); it also keeps the shared CPU free."""
    import torch

    torch.set_num_threads(1)
