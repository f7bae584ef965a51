"""Readers that turn dataset files into plain records, and a synthetic stream generator."""

from ripplerec.datasets.base import Dataset, DatasetNotFoundError
from ripplerec.datasets.movielens import find_movielens_100k, load_movielens_100k
from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "SyntheticConfig",
    "find_movielens_100k",
    "load_movielens_100k",
    "synthetic_stream",
]
