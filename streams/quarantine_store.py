"""The quarantine store: each user's held mail, sealed at rest, indexed per user.

Two key-value maps (Faust tables in the worker, plain dicts in unit tests):
- index:    recipient -> the user's entries: id, status, dates, and the sealed
            index fields (sender, subject, size, score, reasons);
- messages: recipient NUL message id -> the sealed raw message.
Both are keyed so that a user's data sits in the partition of their address,
the same partition as their verdicts and settings. Mutations must run inside
the worker's stream processing (Faust writes table changes to the changelog
of the event being processed).
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import asdict, dataclass, field
from email.header import decode_header, make_header

import msgpack
from prometheus_client import Counter

from postwarden.records import RoutedMessage
from postwarden.sealing import RetiredKeyError, Sealer, TamperedError

log = logging.getLogger(__name__)

TAMPERED = Counter("postwarden_quarantine_tampered_total",
                   "Quarantine entries that failed authentication (altered or moved)")
STORED = Counter("postwarden_quarantine_stored_total", "Messages added to the quarantine store")
EXPIRED = Counter("postwarden_quarantine_expired_total", "Quarantine entries removed at end of retention")

DAY = 86_400.0
MAX_SUBJECT = 300


class NotFound(KeyError):
    """No held message with that id for that user."""


@dataclass(frozen=True)
class Entry:
    message_id: str
    status: str  # held | released | deleted
    received_at: float
    expires_at: float
    sender: str = ""
    from_header: str = ""
    subject: str = ""
    size: int = 0
    score: float = 0.0
    reason: str = ""
    categories: list[str] = field(default_factory=list)
    virus: str | None = None
    rules: list[dict] = field(default_factory=list)

    def matches(self, query: str) -> bool:
        q = query.lower()
        return any(q in s.lower() for s in (self.sender, self.from_header, self.subject, self.reason))


def _header(raw: bytes, name: str) -> str:
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    value = headers.get(name)
    if value is None:
        return ""
    try:
        text = str(make_header(decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError):
        text = str(value)
    return " ".join(text.split())[:MAX_SUBJECT]


def _user_key(recipient: str) -> bytes:
    return recipient.encode()


def _message_key(recipient: str, message_id: str) -> bytes:
    return f"{recipient}\0{message_id}".encode()


class QuarantineStore:
    def __init__(self, index: MutableMapping, messages: MutableMapping, sealer: Sealer) -> None:
        self._index, self._messages, self._sealer = index, messages, sealer

    # -- reading the index ------------------------------------------------------------

    def _rows(self, recipient: str) -> list[dict]:
        value = self._index.get(_user_key(recipient))
        return msgpack.unpackb(value, raw=False) if value else []

    def _write_rows(self, recipient: str, rows: list[dict]) -> None:
        if rows:
            self._index[_user_key(recipient)] = msgpack.packb(rows, use_bin_type=True)
        elif _user_key(recipient) in self._index:
            del self._index[_user_key(recipient)]

    def _entry(self, recipient: str, row: dict) -> Entry:
        base = {"message_id": row["id"], "status": row["st"], "received_at": row["at"],
                "expires_at": row["exp"]}
        if row.get("m") is None:
            return Entry(**base)
        try:
            meta = self._sealer.open(row["t"], recipient, row["id"], "index", row["m"])
        except TamperedError:
            self._report_tampering(row)
            raise
        return Entry(**base, **msgpack.unpackb(meta, raw=False))

    @staticmethod
    def _report_tampering(row: dict) -> None:
        TAMPERED.inc()
        log.error("quarantine entry failed authentication",
                  extra={"message_id": row.get("id"), "tenant": row.get("t")})

    def held(self, recipient: str, query: str = "") -> list[Entry]:
        """The user's held messages, newest first; entries failing authentication are left out."""
        out = []
        for row in self._rows(recipient):
            if row["st"] != "held":
                continue
            try:
                entry = self._entry(recipient, row)
            except (TamperedError, RetiredKeyError):
                continue
            if not query or entry.matches(query):
                out.append(entry)
        out.sort(key=lambda e: (e.received_at, e.message_id), reverse=True)
        return out

    def find(self, recipient: str, message_id: str) -> Entry | None:
        """The entry in any status (None if unknown); raises TamperedError."""
        for row in self._rows(recipient):
            if row["id"] == message_id:
                return self._entry(recipient, row)
        return None

    def message(self, recipient: str, message_id: str) -> tuple[Entry, bytes]:
        """A held message and its raw bytes; NotFound, or TamperedError if altered."""
        entry = self.find(recipient, message_id)
        if entry is None or entry.status != "held":
            raise NotFound(message_id)
        sealed = self._messages.get(_message_key(recipient, message_id))
        if sealed is None:
            raise NotFound(message_id)
        tenant = next(r["t"] for r in self._rows(recipient) if r["id"] == message_id)
        try:
            raw = self._sealer.open(tenant, recipient, message_id, "body",
                                    msgpack.unpackb(sealed, raw=False))
        except TamperedError:
            self._report_tampering({"id": message_id, "t": tenant})
            raise
        return entry, raw

    # -- changes (inside stream processing) -----------------------------------------------

    def add(self, routed: RoutedMessage, retention_days: int, now: float) -> bool:
        """Seals and indexes a quarantined message; False if it is already there (replay)."""
        rows = self._rows(routed.recipient)
        if any(r["id"] == routed.message_id for r in rows):
            return False
        meta = {
            "sender": routed.mail_from, "from_header": _header(routed.raw, "From"),
            "subject": _header(routed.raw, "Subject"), "size": len(routed.raw),
            "score": routed.spam_score, "reason": routed.reason,
            "categories": list(routed.categories), "virus": routed.virus,
            "rules": [{"name": str(r.get("name", "")), "score": r.get("score", 0),
                       "description": str(r.get("description", ""))} for r in routed.rules],
        }
        seal = self._sealer.seal
        body = seal(routed.tenant, routed.recipient, routed.message_id, "body", routed.raw)
        index = seal(routed.tenant, routed.recipient, routed.message_id, "index",
                     msgpack.packb(meta, use_bin_type=True))
        self._messages[_message_key(routed.recipient, routed.message_id)] = msgpack.packb(
            body, use_bin_type=True)
        rows.append({"id": routed.message_id, "t": routed.tenant, "st": "held",
                     "at": routed.received_at, "exp": now + retention_days * DAY, "m": index})
        self._write_rows(routed.recipient, rows)
        STORED.inc()
        return True

    def close(self, recipient: str, message_id: str, status: str) -> None:
        """Marks a held message released or deleted and destroys its sealed content.

        The entry stays (without content) until the retention ends, so a second
        click on a release link can say it was already released.
        """
        rows = self._rows(recipient)
        for row in rows:
            if row["id"] == message_id and row["st"] == "held":
                row["st"], row["m"] = status, None
        self._write_rows(recipient, rows)
        self._messages.pop(_message_key(recipient, message_id), None)

    def expire(self, recipient: str, message_id: str, now: float) -> bool:
        rows = self._rows(recipient)
        keep = [r for r in rows if not (r["id"] == message_id and r["exp"] <= now)]
        if len(keep) == len(rows):
            return False
        self._write_rows(recipient, keep)
        self._messages.pop(_message_key(recipient, message_id), None)
        EXPIRED.inc()
        return True

    def purge(self, recipient: str) -> int:
        """Removes everything of a user (their account was removed)."""
        rows = self._rows(recipient)
        for r in rows:
            self._messages.pop(_message_key(recipient, r["id"]), None)
        self._write_rows(recipient, [])
        return len(rows)

    def due(self, now: float, keys: Iterator[bytes] | None = None) -> list[tuple[str, str, str]]:
        """(tenant, recipient, message id) of entries whose retention has ended."""
        out = []
        for key in keys if keys is not None else list(self._index.keys()):
            recipient = key.decode()
            out.extend((r["t"], recipient, r["id"]) for r in self._rows(recipient) if r["exp"] <= now)
        return out


def entry_json(entry: Entry) -> dict:
    return asdict(entry)
