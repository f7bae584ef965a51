"""Pseudonyms: a keyed HMAC of the user id, on plain data (the stack test is tests/test_privacy.py)."""

from __future__ import annotations

import doctest
import hashlib
import hmac

import pytest
from pydantic import SecretStr

import ripplerec.producers.pseudonyms as pseudonyms_module
from ripplerec.config import Limits, Settings
from ripplerec.producers import Pseudonymizer, looks_pseudonymous, pseudonymize
from ripplerec.producers.pseudonyms import PSEUDONYM_LENGTH

KEY = "0123456789abcdef-test-key"


def test_doctests() -> None:
    assert doctest.testmod(pseudonyms_module).failed == 0


def test_a_pseudonym_is_the_prefixed_truncated_hmac_sha256() -> None:
    expected = "p:" + hmac.new(KEY.encode(), b"user-7", hashlib.sha256).hexdigest()[:32]
    assert pseudonymize("user-7", KEY) == expected
    assert Pseudonymizer(SecretStr(KEY))("user-7") == expected == Pseudonymizer(KEY.encode())("user-7")
    assert len(expected) == PSEUDONYM_LENGTH and looks_pseudonymous(expected)


def test_same_id_same_pseudonym_other_key_or_id_other_pseudonym() -> None:
    pseudo = Pseudonymizer(KEY)
    assert pseudo("ü-user") == pseudo("ü-user")  # cached or not
    assert pseudo("a") != pseudo("b")
    assert pseudo("a") != Pseudonymizer(KEY + "x")("a")
    assert len({pseudo(f"user-{i}") for i in range(10_000)}) == 10_000


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Pseudonymizer("short")


def test_from_settings() -> None:
    assert Pseudonymizer.from_settings(Settings()) is None
    pseudo = Pseudonymizer.from_settings(Settings(pseudonymize_key=KEY))
    assert pseudo is not None and pseudo("u1") == pseudonymize("u1", KEY)
    assert KEY not in repr(pseudo)
    with pytest.raises(ValueError, match="max_id_length"):
        Pseudonymizer.from_settings(Settings(pseudonymize_key=KEY, limits=Limits(max_id_length=20)))


def test_pseudonymize_reads_the_key_from_the_environment(monkeypatch) -> None:
    from ripplerec.config import get_settings

    monkeypatch.setenv("RIPPLEREC_PSEUDONYMIZE_KEY", KEY)
    get_settings.cache_clear()
    try:
        assert pseudonymize("u1") == pseudonymize("u1", KEY)
        monkeypatch.delenv("RIPPLEREC_PSEUDONYMIZE_KEY")
        get_settings.cache_clear()
        with pytest.raises(ValueError, match="RIPPLEREC_PSEUDONYMIZE_KEY"):
            pseudonymize("u1")
    finally:
        get_settings.cache_clear()


def test_looks_pseudonymous() -> None:
    assert not looks_pseudonymous("p:" + "A" * 32)  # upper case is not what we produce
    assert not looks_pseudonymous("p:" + "a" * 31)
    assert not looks_pseudonymous("user-1")
