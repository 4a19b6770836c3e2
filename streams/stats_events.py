"""The anonymous events analytics is built from (mail.events), made in one place.

An event names the tenant, the decision and measured quantities: never an
address, IP, subject or message id. A virus is reduced to its signature
family, a short word that cannot carry personal data.
"""

from __future__ import annotations

import hashlib
import re

from postwarden.records import StatsEvent, Verdict, verdict_label

RELEASE = "release"
_SIGNATURE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_FAMILY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{1,31}$")


def virus_family(signature: str | None) -> str | None:
    """'Win.Trojan.Emotet-6312345-0' -> 'Emotet'; 'Eicar-Test-Signature' -> 'Eicar'.

    ClamAV names read platform.category.name-id-revision; the family is the
    name up to its first dash. Anything that does not look like a plain word
    (a locally written signature could name anything) becomes 'other'.
    """
    if not signature:
        return None
    if not _SIGNATURE.match(signature):
        return "other"
    name = signature.rsplit(".", 1)[-1].split("-", 1)[0]
    return name if _FAMILY.match(name) else "other"


def event_id(message_id: str, recipient: str, action: str) -> str:
    """The same for every replay of one decision; reveals neither input."""
    return hashlib.blake2b(f"{message_id}\0{recipient}\0{action}".encode(), digest_size=12).hexdigest()


def anonymous_event(verdict: Verdict, action: str, now: float) -> StatsEvent:
    return StatsEvent(
        tenant=verdict.tenant, event_time=now, verdict=verdict_label(verdict.virus, verdict.categories),
        category=verdict.categories[0] if verdict.categories else "none",
        action=action, size_bytes=verdict.size, spam_score=verdict.spam_score,
        latency_ms=max(0.0, (now - verdict.received_at) * 1000.0),
        virus_family=virus_family(verdict.virus),
        event_id=event_id(verdict.message_id, verdict.recipient, action),
    )


def release_event(tenant: str, verdict: str, category: str, size_bytes: int, spam_score: float,
                  quarantined_at: float, now: float) -> StatsEvent:
    """What the Message Center emits when a user releases a held message.

    latency_ms is the time the message spent in quarantine; the windows keep it
    out of the end-to-end latency histogram.
    """
    return StatsEvent(
        tenant=tenant, event_time=now, verdict=verdict, category=category, action=RELEASE,
        size_bytes=size_bytes, spam_score=spam_score,
        latency_ms=max(0.0, (now - quarantined_at) * 1000.0),
    )
