"""Fixtures of the streaming tests (helpers live in ``streamkit.py``)."""

from __future__ import annotations

import pytest

from ripplerec.schemas import AvroCodec


@pytest.fixture(scope="session")
def stream_codec() -> AvroCodec:
    return AvroCodec()
