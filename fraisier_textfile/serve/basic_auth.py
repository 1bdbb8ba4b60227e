"""Basic auth: the ``Authorization`` header read strictly, and passwords checked against the web config's bcrypt
hashes without paying bcrypt's cost at every scrape."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping

import bcrypt


def parse_basic_authorization(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic ...`` header, None if absent or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


class PasswordChecker:
    """bcrypt costs tens of milliseconds by design; Prometheus sends the same credentials every scrape. So
    a success is remembered, by a digest of user, hash and password, and the next check is a dict look-up.
    Failures are not remembered: guessing stays as slow as bcrypt makes it."""

    _MAXIMUM_REMEMBERED = 256

    def __init__(self) -> None:
        self._remembered: set[bytes] = set()

    def check(self, users: Mapping[str, str], user: str, password: str) -> bool:
        hashed = users.get(user)
        digest = hashlib.sha256(f"{user}\0{hashed}\0{password}".encode()).digest()
        if hashed is not None and digest in self._remembered:
            return True
        # An unknown user costs a bcrypt check too, so that response times do not tell which users exist.
        reference = hashed if hashed is not None else next(iter(users.values()))
        try:
            matches = bcrypt.checkpw(password.encode("utf-8"), reference.encode("ascii"))
        except ValueError:  # longer than bcrypt's 72 bytes, or a hash bcrypt refuses: no match
            matches = False
        if not matches or hashed is None:
            return False
        if len(self._remembered) >= self._MAXIMUM_REMEMBERED:
            self._remembered.clear()
        self._remembered.add(digest)
        return True
