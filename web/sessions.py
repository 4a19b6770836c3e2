"""Message Center sessions and CSRF tokens.

A session is a signed token (postwarden.signed_links, action "session") in a
cookie: tenant, address, a fresh random session id at every sign-in (so a
session id planted before sign-in is never promoted: no fixation), the
user's session version (bumped server-side to end every session), the
sign-in time and the last activity. It expires after 20 minutes without a
request and 12 hours after sign-in; every request re-issues it.

Framed sessions (single sign-on inside a provider's portal) use a
partitioned cookie (SameSite=None; Secure; Partitioned, "CHIPS"): browsers
that block third-party cookies still keep it, keyed to the portal's site.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass

from postwarden import signed_links
from postwarden.keyring import Keyring

COOKIE = "pw_session"
IDLE_SECONDS = 20 * 60
MAX_AGE_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    tenant: str
    address: str
    sid: str
    session_version: int
    signed_in_at: float
    framed: bool


def new_session(tenant: str, address: str, session_version: int, framed: bool, now: float) -> Session:
    return Session(tenant, address, os.urandom(16).hex(), session_version, now, framed)


def encode(keyring: Keyring, s: Session, now: float) -> str:
    claims = {"r": s.address, "sid": s.sid, "sv": s.session_version, "iat": s.signed_in_at,
              "fr": s.framed}
    return signed_links.sign(keyring, s.tenant, "session", claims, IDLE_SECONDS, now=now)


def decode(keyring: Keyring, token: str | None, now: float) -> Session | None:
    if not token:
        return None
    try:
        tenant, c = signed_links.verify(keyring, token, "session", now=now)
        s = Session(tenant, str(c["r"]), str(c["sid"]), int(c["sv"]), float(c["iat"]), bool(c["fr"]))
    except (signed_links.LinkError, KeyError, TypeError, ValueError):
        return None
    if now - s.signed_in_at > MAX_AGE_SECONDS:
        return None
    return s


def cookie_attributes(framed: bool, secure: bool) -> str:
    if framed:
        return "Path=/; HttpOnly; SameSite=None; Secure; Partitioned"
    return "Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")


def csrf_token(keyring: Keyring, bound_to: str) -> str:
    """Token for forms, bound to a session id (or a sign-in form's nonce)."""
    _, key = keyring.derive("csrf", "*")
    return hmac.new(key, bound_to.encode(), hashlib.sha256).hexdigest()


def csrf_ok(keyring: Keyring, bound_to: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(keyring, bound_to), str(presented))


def now() -> float:
    return time.time()
