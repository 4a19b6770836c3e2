"""A quarantined message as it travels on mail.quarantine: sealed before it leaves the policy agent.

Only what routing and retention need is in clear (ids, tenant, recipient,
time, and the policy's reason code such as "spam" or "virus"); the message and its index entry (sender, subject, date, size, score,
reasons) are sealed with the tenant's key, bound to tenant, recipient and
message id, exactly as the quarantine store keeps them at rest, so the store
files them unopened and the topic never holds readable mail.

Index fields are clipped to byte budgets so that one entry has a known
maximum size: the store packs a fixed number of entries per table value.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from email.header import Header, decode_header, make_header
from email.utils import parsedate_to_datetime
from typing import Any

import msgpack

from postwarden.records import RecordError, RoutedMessage, _Record
from postwarden.sealing import Sealer

# Byte budgets of the index fields (UTF-8): together at most INDEX_MAX_BYTES packed.
TEXT_BYTES = {"sender": 320, "from_header": 300, "subject": 300, "reason": 120, "virus": 120}
MAX_CATEGORIES, CATEGORY_BYTES = 8, 32
MAX_RULES, RULE_NAME_BYTES, RULE_DESCRIPTION_BYTES = 10, 64, 120
INDEX_MAX_BYTES = 4096


@dataclass(frozen=True, slots=True)
class HeldMessage(_Record):
    """One recipient's quarantined message (mail.quarantine, key: recipient)."""

    message_id: str
    tenant: str
    recipient: str
    reason: str
    received_at: float
    index: bytes  # sealed index fields (msgpack of the sealed value), part "index"
    body: bytes  # sealed raw message (msgpack of the sealed value), part "body"

    @property
    def dedupe_key(self) -> tuple[str, str]:
        return (self.message_id, self.recipient)


def _clip(text: str, limit: int) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def _header(headers: Any, name: str) -> str:
    value = headers.get(name)
    if value is None:
        return ""
    if isinstance(value, Header):
        # Raw 8-bit (SMTPUTF8) header bytes come back as an unknown-8bit Header: read them as UTF-8.
        value = "".join(part.decode("utf-8", "replace") if isinstance(part, bytes) else part
                        for part, _ in decode_header(value))
    text = str(value)
    try:
        text = str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        pass
    # Collapsed: folded or hostile headers must not break pages or generated mail.
    return " ".join(text.split())


def _date(headers: Any) -> float | None:
    value = headers.get("Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(str(value)).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def index_fields(routed: RoutedMessage) -> dict[str, Any]:
    """The searchable summary of a held message, from its headers only, within INDEX_MAX_BYTES."""
    head = routed.raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head + b"\r\n\r\n")
    return {
        "sender": _clip(routed.mail_from, TEXT_BYTES["sender"]),
        "from_header": _clip(_header(headers, "From"), TEXT_BYTES["from_header"]),
        "subject": _clip(_header(headers, "Subject"), TEXT_BYTES["subject"]),
        "date": _date(headers),
        "size": len(routed.raw), "score": float(routed.spam_score),
        "reason": _clip(routed.reason, TEXT_BYTES["reason"]),
        "categories": [_clip(str(c), CATEGORY_BYTES) for c in routed.categories[:MAX_CATEGORIES]],
        "virus": _clip(routed.virus, TEXT_BYTES["virus"]) if routed.virus else None,
        "rules": [{"name": _clip(str(r.get("name", "")), RULE_NAME_BYTES),
                   "score": float(r.get("score", 0) or 0),
                   "description": _clip(str(r.get("description", "")), RULE_DESCRIPTION_BYTES)}
                  for r in routed.rules[:MAX_RULES]],
    }


def seal_held(sealer: Sealer, routed: RoutedMessage) -> HeldMessage:
    meta = msgpack.packb(index_fields(routed), use_bin_type=True)
    seal = sealer.seal
    index = seal(routed.tenant, routed.recipient, routed.message_id, "index", meta)
    body = seal(routed.tenant, routed.recipient, routed.message_id, "body", routed.raw)
    return HeldMessage(routed.message_id, routed.tenant, routed.recipient, routed.reason, routed.received_at,
                       msgpack.packb(index, use_bin_type=True), msgpack.packb(body, use_bin_type=True))


def decode_held(sealer: Sealer, value: bytes) -> HeldMessage:
    """A mail.quarantine record; one written in clear by an earlier policy agent is sealed here,
    so mail in flight during an upgrade is kept. Raises RecordError."""
    try:
        return HeldMessage.decode(value)
    except RecordError:
        try:
            return seal_held(sealer, RoutedMessage.decode(value))
        except RecordError:
            raise RecordError("neither a HeldMessage nor an earlier RoutedMessage") from None


def open_index(sealer: Sealer, tenant: str, recipient: str, message_id: str, sealed: Any) -> dict:
    """The index fields; raises TamperedError / RetiredKeyError like Sealer.open."""
    return msgpack.unpackb(sealer.open(tenant, recipient, message_id, "index", sealed), raw=False)


def unpack_sealed(value: bytes) -> Any:
    return msgpack.unpackb(value, raw=False)
