"""Password hashing: scrypt, salted, slow on purpose (RFC 7914).

The stored form names its parameters, so the cost can grow later and old
hashes still verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_SCHEME = "scrypt"
MIN_LENGTH = 10
MAX_LENGTH = 1024


class PasswordError(ValueError):
    """A password that may not be set (too short or too long)."""


def check_policy(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordError(f"password must have at most {MAX_LENGTH} characters")


def hash_password(password: str, cost: int = 15) -> str:
    check_policy(password)
    salt = os.urandom(16)
    n, r, p = 2 ** cost, 8, 1
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)
    return "$".join([_SCHEME, str(n), str(r), str(p), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time check; a missing or malformed hash never verifies."""
    if not stored or len(password) > MAX_LENGTH:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != _SCHEME:
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), maxmem=256 * 1024 * 1024, dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)
