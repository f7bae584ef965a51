"""Pseudonymous user ids: a keyed HMAC of the raw id, computed in the app before anything is sent.

With ``RIPPLEREC_PSEUDONYMIZE_KEY`` set, :class:`~ripplerec.producers.EventProducer` and
:class:`~ripplerec.consumers.RecommendationClient` send ``pseudonymize(user_id)`` wherever a user id
goes (record fields and Kafka keys), so topics and Redis only ever hold pseudonyms. A pseudonym is
``"p:"`` followed by the first 32 hex characters (128 bits) of ``HMAC-SHA256(key, user_id)``: the
prefix tells an operator what they look at, and at 128 bits two of a billion users share a pseudonym
with a probability of about 10^-21. Without the key nobody can recompute or reverse it; with it, a
service can find its own users' pseudonyms (what :class:`~ripplerec.consumers.RecommendationConsumer`
yields) by calling :func:`pseudonymize`.

Only user ids are pseudonymised. Item ids, event ids and context values are sent as they are: keep
personal data out of them. Changing the key gives every user a new pseudonym (their old profiles are
left behind, to expire with ``RIPPLEREC_PROFILE_TTL_S`` or be removed with ``ripplerec forget``).

Imports only the standard library and the settings (no Kafka, torch, faust or redis).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from pydantic import SecretStr

if TYPE_CHECKING:
    from ripplerec.config import Settings

__all__ = [
    "PSEUDONYM_PREFIX",
    "PSEUDONYM_HEX_LENGTH",
    "PSEUDONYM_LENGTH",
    "MIN_KEY_BYTES",
    "Pseudonymizer",
    "pseudonymize",
    "looks_pseudonymous",
]

#: What every pseudonym starts with.
PSEUDONYM_PREFIX = "p:"
#: Hex characters of the HMAC kept (128 bits).
PSEUDONYM_HEX_LENGTH = 32
#: The length of every pseudonym.
PSEUDONYM_LENGTH = len(PSEUDONYM_PREFIX) + PSEUDONYM_HEX_LENGTH
#: The shortest key accepted: a short key could be found by trying keys against known ids.
MIN_KEY_BYTES = 16
_HEX_DIGITS = frozenset("0123456789abcdef")
_CACHE_SIZE = 100_000


class Pseudonymizer:
    """Turns raw user ids into pseudonyms with one key (a callable; recent ids are cached).

    >>> pseudo = Pseudonymizer("an example key, 16+ bytes")
    >>> pseudo("user-42")
    'p:1a17c95bae3bdc4bbce3626af9fe5b63'
    >>> pseudo("user-42") == pseudo("user-42") != pseudo("user-43")
    True
    """

    __slots__ = ("_key", "_cache")

    def __init__(self, key: str | bytes | SecretStr) -> None:
        if isinstance(key, SecretStr):
            key = key.get_secret_value()
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        if len(raw) < MIN_KEY_BYTES:
            raise ValueError(
                f"the pseudonymisation key must be at least {MIN_KEY_BYTES} bytes (got {len(raw)}); "
                "use a random one, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        self._key = raw
        self._cache: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Pseudonymizer | None:
        """The pseudonymizer of ``settings.pseudonymize_key``; None when no key is set.

        Raises ``ValueError`` when the key is too short, or when ``settings.limits.max_id_length``
        is below :data:`PSEUDONYM_LENGTH` (the worker would refuse every pseudonym).
        """
        if settings.pseudonymize_key is None:
            return None
        if settings.limits.max_id_length < PSEUDONYM_LENGTH:
            raise ValueError(
                f"pseudonyms are {PSEUDONYM_LENGTH} characters long, more than limits.max_id_length "
                f"({settings.limits.max_id_length})"
            )
        return cls(settings.pseudonymize_key)

    def __call__(self, user_id: str) -> str:
        pseudonym = self._cache.get(user_id)
        if pseudonym is None:
            digest = hmac.digest(self._key, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256)
            pseudonym = PSEUDONYM_PREFIX + digest.hex()[:PSEUDONYM_HEX_LENGTH]
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[user_id] = pseudonym
        return pseudonym

    def __repr__(self) -> str:
        return "<Pseudonymizer (key hidden)>"


def pseudonymize(user_id: str, key: str | bytes | SecretStr | None = None) -> str:
    """The pseudonym the clients send for ``user_id``; ``key`` defaults to ``RIPPLEREC_PSEUDONYMIZE_KEY``.

    For services that read recommendations (:class:`~ripplerec.consumers.RecommendationConsumer`
    yields pseudonyms) or run ``ripplerec forget --pseudonym``. Raises ``ValueError`` when no key
    is given or set.

    >>> pseudonymize("user-42", key="an example key, 16+ bytes")
    'p:1a17c95bae3bdc4bbce3626af9fe5b63'
    """
    if key is None:
        from ripplerec.config import get_settings

        key = get_settings().pseudonymize_key
        if key is None:
            raise ValueError("no key: pass one, or set RIPPLEREC_PSEUDONYMIZE_KEY")
    return Pseudonymizer(key)(user_id)


def looks_pseudonymous(user_id: str) -> bool:
    """Whether ``user_id`` has the form of a pseudonym (``p:`` and 32 lowercase hex characters).

    >>> looks_pseudonymous("p:1a17c95bae3bdc4bbce3626af9fe5b63"), looks_pseudonymous("user-42")
    (True, False)
    """
    return (
        len(user_id) == PSEUDONYM_LENGTH
        and user_id.startswith(PSEUDONYM_PREFIX)
        and _HEX_DIGITS.issuperset(user_id[len(PSEUDONYM_PREFIX) :])
    )
