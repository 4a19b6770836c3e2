"""The contract between `postwarden web` and the workers' mailbox API.

The workers serve per-user data on their web port; only holders of the
keyring (the web front and the workers themselves) can call it: each request
carries a token derived from the master key, compared in constant time.
"""

from __future__ import annotations

import hmac
from urllib.parse import quote

from postwarden.keyring import Keyring

HEADER = "X-Postwarden-Internal"
# Set on a request one worker forwards to the partition owner, so it is forwarded once at most.
ROUTED_HEADER = "X-Postwarden-Routed"
PREFIX = "/mailbox"


def token(keyring: Keyring, key_id: str | None = None) -> str:
    return keyring.derive("internal-api", "*", key_id)[1].hex()


def authorized(keyring: Keyring, presented: str | None) -> bool:
    """Any key of the ring is accepted: during a rotation the web front and the
    workers restart one by one, and a worker already holding the new keys file
    must still serve a front that signs with the previous current key."""
    if presented is None:
        return False
    matches = [hmac.compare_digest(presented.encode(), token(keyring, k).encode())
               for k in keyring.key_ids]
    return any(matches)


def path(address: str, *parts: str) -> str:
    return "/".join([PREFIX, quote(address, safe="@"), *(quote(p, safe="") for p in parts)])
