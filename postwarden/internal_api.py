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


def token(keyring: Keyring) -> str:
    return keyring.derive("internal-api", "*")[1].hex()


def authorized(keyring: Keyring, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), token(keyring).encode())


def path(address: str, *parts: str) -> str:
    return "/".join([PREFIX, quote(address, safe="@"), *(quote(p, safe="") for p in parts)])
