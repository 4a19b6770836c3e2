"""SMTP AUTH passwords as salted scrypt hashes (never stored or logged in clear).

Format: ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``. Verification costs
tens of milliseconds of CPU on purpose, so callers run it off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_LOG2_N, _R, _P = 15, 8, 1
_DKLEN = 32


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("empty password")
    salt = os.urandom(16)
    digest = _scrypt(password, salt, _LOG2_N, _R, _P)
    return "$".join(("scrypt", str(_LOG2_N), str(_R), str(_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, log2_n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(log2_n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=n * r * 128 * 2, dklen=_DKLEN)
