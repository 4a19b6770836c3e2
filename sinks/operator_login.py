"""Operator password hashes (scrypt) and login sessions for the overview page.

The hash lives in POSTWARDEN_OPERATOR_PASSWORD_HASH as
``scrypt$N$r$p$salt$hash`` (base64 parts), made by
``postwarden overview hash-password``; the password itself is never stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time

_N, _R, _P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("the password must not be empty")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def check_hash_format(encoded: str) -> None:
    """Raises ValueError naming what is wrong, so a bad setting fails at start."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("POSTWARDEN_OPERATOR_PASSWORD_HASH: expected scrypt$N$r$p$salt$hash "
                         "(make one with `postwarden overview hash-password`)")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        base64.b64decode(parts[4], validate=True)
        base64.b64decode(parts[5], validate=True)
    except ValueError as exc:
        raise ValueError(f"POSTWARDEN_OPERATOR_PASSWORD_HASH: malformed ({exc})") from None
    if n < 2**14 or n & (n - 1) or r < 1 or p < 1:
        raise ValueError("POSTWARDEN_OPERATOR_PASSWORD_HASH: scrypt parameters too weak or invalid")


def verify_password(password: str, encoded: str) -> bool:
    check_hash_format(encoded)
    _, n, r, p, salt, digest = encoded.split("$")
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                            p=int(p), maxmem=_MAXMEM, dklen=len(expected))
    return hmac.compare_digest(actual, expected)


class Sessions:
    """Random session tokens held in memory; a restart logs everyone out."""

    def __init__(self, lifetime: float = 8 * 3600) -> None:
        self.lifetime = lifetime
        self._expiry: dict[str, float] = {}

    def new(self) -> str:
        now = time.monotonic()
        self._expiry = {t: e for t, e in self._expiry.items() if e > now}
        token = secrets.token_urlsafe(32)
        self._expiry[token] = now + self.lifetime
        return token

    def valid(self, token: str | None) -> bool:
        return bool(token) and self._expiry.get(token, 0) > time.monotonic()

    def end(self, token: str | None) -> None:
        if token:
            self._expiry.pop(token, None)
