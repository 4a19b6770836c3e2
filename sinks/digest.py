"""Quarantine digests: a periodic summary of the mail held for one user.

Digests go out on slot boundaries of the tenant's interval (every 1d: at
00:00 UTC; every 6h: 00, 06, 12, 18 UTC) and list what was held before the
boundary and not listed before: sender, subject, date and score, never the
content. Each entry can carry a signed, expiring release link, and the digest
a link to the Message Center, unless the tenant turned links off. A digest is
identified by (tenant, recipient, slot), so a replay after a crash produces
the same message id and is delivered once.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from postwarden.config import Tenant
from postwarden.keyring import Keyring
from postwarden.records import _Record
from postwarden.signed_links import sign
from sinks.generated_mail import HeldSummary, alternative, derived_id, format_time

MAX_LISTED = 200
# Pending entries kept per user: the state is rewritten at every held message, so it must stay
# small however much mail a user gets; older entries beyond it are only counted.
MAX_PENDING = MAX_LISTED


@dataclass(frozen=True, slots=True)
class DigestState(_Record):
    """Per user, on mail.digest.state (key: recipient), partition of the recipient's held mail."""

    recipient: str
    tenant: str
    pending: list[dict[str, Any]] = field(default_factory=list)  # see entry()
    last_slot: int = -1  # slot number of the last digest sent
    source_offset: int = -1  # last mail.quarantine offset applied (replays below it are no-ops)
    unlisted: int = 0  # held since the last digest but dropped from pending (MAX_PENDING)


def with_pending(state: DigestState, new: dict[str, Any], offset: int) -> DigestState:
    """The state with one more held message, within MAX_PENDING entries (the oldest are counted)."""
    pending = sorted([*state.pending, new], key=lambda e: e["q"])
    dropped = max(0, len(pending) - MAX_PENDING)
    return DigestState(state.recipient, state.tenant, pending[dropped:], state.last_slot, offset,
                       state.unlisted + dropped)


def entry(held: HeldSummary) -> dict[str, Any]:
    return {"m": held.message_id, "s": held.sender, "j": held.subject, "d": held.date,
            "c": round(held.score, 1), "q": held.received_at}


def slot_of(ts: float, interval: int) -> int:
    return int(ts // interval)


def due_entries(state: DigestState, interval: int, now: float) -> list[dict[str, Any]]:
    """Entries to list now: held before the current slot began, if no digest went out in it."""
    slot = slot_of(now, interval)
    if slot <= state.last_slot:
        return []
    return [e for e in state.pending if slot_of(e["q"], interval) < slot]


def digest_message_id(tenant: str, recipient: str, slot: int) -> str:
    return derived_id("digest", tenant, recipient, str(slot))


def release_url(public_url: str, keyring: Keyring, tenant: str, recipient: str,
                message_id: str, ttl: float, now: float) -> str:
    token = sign(keyring, tenant, "release", {"m": message_id, "r": recipient}, ttl, now=now)
    return f"{public_url.rstrip('/')}/r/{token}"


def open_url(public_url: str, keyring: Keyring, tenant: str, recipient: str, ttl: float,
             now: float) -> str:
    token = sign(keyring, tenant, "open", {"r": recipient}, ttl, now=now)
    return f"{public_url.rstrip('/')}/open/{token}"


def build_digest(tenant: Tenant, recipient: str, entries: list[dict[str, Any]], slot: int,
                 sender: str, hostname: str, public_url: str, keyring: Keyring,
                 now: float, unlisted: int = 0) -> bytes:
    if not entries:
        raise ValueError("no digest without held mail")
    # Links live as long as the held mail they point at.
    ttl = tenant.quarantine_retention_days * 86400.0
    links = tenant.digest.links
    listed = sorted(entries, key=lambda e: e["q"], reverse=True)[:MAX_LISTED]
    n = len(entries) + unlisted
    more = n - len(listed)
    intro = f"{n} message{'s' if n != 1 else ''} addressed to you {'were' if n != 1 else 'was'} " \
            "held in quarantine since your last summary."
    text_rows, html_rows = [], []
    for e in listed:
        date = format_time(e["d"] or e["q"])
        sender_name = e["s"] or "(unknown sender)"
        release = (release_url(public_url, keyring, tenant.id, recipient, e["m"], ttl, now)
                   if links else None)
        text_rows.append(f"- {date}  score {e['c']:g}\n  From: {sender_name}\n  Subject: {e['j']}\n"
                         + (f"  Release: {release}\n" if release else ""))
        html_rows.append(
            f"<tr><td>{html.escape(date)}</td><td>{html.escape(sender_name)}</td>"
            f"<td>{html.escape(e['j'])}</td><td>{e['c']:g}</td>"
            + (f'<td><a href="{html.escape(release)}">Release</a></td>' if release else "")
            + "</tr>")
    center = open_url(public_url, keyring, tenant.id, recipient, ttl, now) if links else None
    tail = f"...and {more} more.\n" if more else ""
    text = (intro + "\n\n" + "\n".join(text_rows) + tail
            + (f"\nSee all your held mail in the Message Center: {center}\n" if center else
               "\nSee all your held mail in the Message Center.\n")
            + f"Held mail is deleted after {tenant.quarantine_retention_days} days.\n")
    head = "<tr><th>Date</th><th>From</th><th>Subject</th><th>Score</th>" \
           + ("<th></th>" if links else "") + "</tr>"
    html_part = (
        f"<html><body><p>{html.escape(intro)}</p><table>{head}{''.join(html_rows)}</table>"
        + (f"<p>{html.escape(tail)}</p>" if tail else "")
        + (f'<p><a href="{html.escape(center)}">Open the Message Center</a></p>' if center else
           "<p>See all your held mail in the Message Center.</p>")
        + f"<p>Held mail is deleted after {tenant.quarantine_retention_days} days.</p>"
        "</body></html>")
    return alternative(sender, recipient, f"Quarantine summary: {n} held message{'s' if n != 1 else ''}",
                       text, html_part, digest_message_id(tenant.id, recipient, slot), hostname, now)
