"""Signed, expiring tokens for links in mail and single sign-on.

A token is base64url(msgpack payload) "." base64url(HMAC-SHA256). The HMAC
key is the tenant's link key from the keyring, so a token made for one tenant
never verifies for another, and rotating the master key keeps older links
valid until they expire (the payload names its key id).
"""

from __future__ import annotations

import base64
import hmac
import time
from hashlib import sha256
from typing import Any

import msgpack

from postwarden.keyring import Keyring

PURPOSE = "links"


class LinkError(ValueError):
    """The token is malformed, tampered with, expired, or for something else."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(keyring: Keyring, tenant: str, action: str, claims: dict[str, Any], ttl_seconds: float,
         now: float | None = None) -> str:
    issued = time.time() if now is None else now
    key_id, key = keyring.derive(PURPOSE, tenant)
    payload = msgpack.packb({"t": tenant, "a": action, "k": key_id, "exp": int(issued + ttl_seconds),
                             "c": claims}, use_bin_type=True)
    mac = hmac.new(key, payload, sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify(keyring: Keyring, token: str, action: str, now: float | None = None) -> tuple[str, dict[str, Any]]:
    """(tenant, claims) of a valid token for action; raises LinkError otherwise."""
    try:
        body, mac_text = token.split(".", 1)
        payload, mac = _unb64(body), _unb64(mac_text)
        data = msgpack.unpackb(payload, raw=False)
        tenant, key_id = data["t"], data["k"]
    except Exception:
        raise LinkError("malformed link") from None
    try:
        _, key = keyring.derive(PURPOSE, tenant, key_id)
    except KeyError:
        raise LinkError("link signed with a retired key") from None
    if not hmac.compare_digest(hmac.new(key, payload, sha256).digest(), mac):
        raise LinkError("link signature does not match")
    if data.get("a") != action:
        raise LinkError("link is for another action")
    if (time.time() if now is None else now) > data.get("exp", 0):
        raise LinkError("link has expired")
    return tenant, data.get("c", {})
