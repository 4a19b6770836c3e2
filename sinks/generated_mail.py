"""Mail Postwarden writes itself (DSNs, virus alerts, digests) and how it enters delivery.

Every generated message is multipart text + HTML, marked Auto-Submitted, sent
from the null sender (so nothing ever answers it) and given a message id
derived from what it is about: a replay after a crash produces the same id,
and the delivery sink's delivered-log then keeps it from going out twice.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage, Message
from email.policy import SMTP
from email.utils import format_datetime, getaddresses

from postwarden.held_mail import HeldMessage, open_index, unpack_sealed
from postwarden.records import RoutedMessage
from postwarden.sealing import Sealer


def derived_id(*parts: str) -> str:
    """32 hex characters, like records.new_message_id, but stable for the same parts."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def alternative(sender: str, recipient: str, subject: str, text: str, html: str,
                message_id: str, hostname: str, now: float) -> bytes:
    """A multipart/alternative message with the headers every generated mail carries."""
    msg = EmailMessage(policy=SMTP)
    stamp(msg, sender, recipient, subject, message_id, hostname, now)
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def stamp(msg: Message, sender: str, recipient: str, subject: str, message_id: str,
          hostname: str, now: float) -> None:
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    msg["Message-ID"] = f"<{message_id}@{hostname}>"
    msg["Auto-Submitted"] = "auto-generated"
    if "MIME-Version" not in msg:
        msg["MIME-Version"] = "1.0"


def routed(tenant: str, recipient: str, raw: bytes, message_id: str, reason: str,
           now: float) -> RoutedMessage:
    """The record that puts a generated message on mail.deliver (null envelope sender)."""
    return RoutedMessage(
        message_id=message_id, tenant=tenant, recipient=recipient, mail_from="",
        action="deliver", reason=reason, spam_score=0.0, virus=None, categories=[],
        rules=[], received_at=now, raw=raw,
    )


@dataclass(frozen=True)
class HeldSummary:
    """What a notice may say about held mail: from its sealed index entry, never its content."""

    message_id: str
    tenant: str
    recipient: str
    received_at: float
    sender: str
    subject: str
    date: float | None
    score: float
    virus: str | None


def held_summary(sealer: Sealer, held: HeldMessage) -> HeldSummary:
    """Opens the index entry of a held message; raises TamperedError / RetiredKeyError."""
    meta = open_index(sealer, held.tenant, held.recipient, held.message_id, unpack_sealed(held.index))
    sender = _one_line(meta.get("from_header", ""))
    addresses = getaddresses([sender]) if sender else []
    if addresses and addresses[0][1]:
        name, addr = addresses[0]
        sender = f"{name} <{addr}>" if name else addr
    return HeldSummary(held.message_id, held.tenant, held.recipient, held.received_at, sender,
                       _one_line(meta.get("subject", "")) or "(no subject)", meta.get("date"),
                       float(meta.get("score", 0.0)), meta.get("virus"))


def _one_line(value: object) -> str:
    # Index fields are decoded already; hostile ones must not break the generated mail's structure.
    return " ".join(str(value or "").split())[:300]


def format_time(ts: float | None) -> str:
    if ts is None:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
