"""Mail Postwarden writes itself (DSNs, virus alerts, digests) and how it enters delivery.

Every generated message is multipart text + HTML, marked Auto-Submitted, sent
from the null sender (so nothing ever answers it) and given a message id
derived from what it is about: a replay after a crash produces the same id,
and the delivery sink's delivered-log then keeps it from going out twice.
"""

from __future__ import annotations

import hashlib
import time
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.policy import SMTP, compat32
from datetime import datetime, timezone
from email.utils import format_datetime, getaddresses, parsedate_to_datetime

from postwarden.records import RoutedMessage


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


class HeaderSummary:
    """Sender, subject and date of a message, read from its headers only (never the body)."""

    __slots__ = ("sender", "subject", "date")

    def __init__(self, raw: bytes) -> None:
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        headers = BytesHeaderParser(policy=compat32).parsebytes(head + b"\r\n\r\n")
        self.sender = _decoded(headers.get("From", ""))
        addresses = getaddresses([self.sender]) if self.sender else []
        if addresses and addresses[0][1]:
            name, addr = addresses[0]
            self.sender = f"{name} <{addr}>" if name else addr
        self.subject = _decoded(headers.get("Subject", "")) or "(no subject)"
        self.date = _date(headers.get("Date"))


def _decoded(value: object) -> str:
    from email.header import decode_header, make_header

    text = str(value or "")
    try:
        text = str(make_header(decode_header(text)))
    except Exception:
        pass
    # Folded or hostile headers must not break the generated mail's structure.
    return " ".join(text.split())[:300]


def _date(value: object) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(str(value)).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def format_time(ts: float | None) -> str:
    if ts is None:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
