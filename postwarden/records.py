"""Records that cross a topic, and their compact wire encoding.

Every record is a frozen dataclass encoded with msgpack (a few microseconds per
record, against tens for JSON with base64 for the raw bytes). Each encoding
carries a schema version so consumers can refuse what they do not understand
instead of misreading it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import msgpack

ENVELOPE_HEADER = "pw-envelope"
ENVELOPE_VERSION_HEADER = "pw-envelope-version"


class RecordError(ValueError):
    """A record on a topic could not be decoded (wrong version or shape)."""


def new_message_id() -> str:
    """Time-ordered, unguessable id: 48 bits of milliseconds, 80 random bits."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def verdict_label(virus: str | None, categories: list[str]) -> str:
    """The one-word verdict used in events and metrics."""
    if virus:
        return "virus"
    if "unparseable" in categories:
        return "unparseable"
    return "spam" if "spam" in categories else "clean"


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _nested_record(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


class _Record:
    VERSION: ClassVar[int] = 1

    def encode(self) -> bytes:
        # A shallow dict: dataclasses.asdict deep-copies every field (the raw bytes and
        # the rule lists included) and cost ~10x the packing itself. Nested records, if
        # any, still go through asdict via the default hook, so the bytes are the same.
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]
        data = {name: getattr(self, name) for name in names}
        data["v"] = self.VERSION
        return msgpack.packb(data, use_bin_type=True, default=_nested_record)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        try:
            data = msgpack.unpackb(payload, raw=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise RecordError(f"{cls.__name__}: not msgpack: {exc}") from exc
        if not isinstance(data, dict):
            raise RecordError(f"{cls.__name__}: expected a map, got {type(data).__name__}")
        version = data.pop("v", None)
        if version != cls.VERSION:
            raise RecordError(f"{cls.__name__}: unsupported version {version!r}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise RecordError(f"{cls.__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Envelope(_Record):
    """SMTP envelope of one accepted message; travels in mail.inbound record headers."""

    message_id: str
    tenant: str
    mail_from: str
    rcpt_tos: list[str]
    client_ip: str
    helo: str
    tls: bool
    received_at: float
    size: int
    ingest_node: str

    def to_headers(self) -> list[tuple[str, bytes]]:
        return [
            (ENVELOPE_VERSION_HEADER, str(self.VERSION).encode()),
            (ENVELOPE_HEADER, self.encode()),
        ]

    @classmethod
    def from_headers(cls, headers: Any) -> Envelope:
        """Accepts Faust's dict-like headers or aiokafka's list of pairs."""
        items = headers.items() if hasattr(headers, "items") else headers or []
        found = {k: v for k, v in items}
        if ENVELOPE_HEADER not in found:
            raise RecordError("mail.inbound record without an envelope header")
        return cls.decode(found[ENVELOPE_HEADER])


@dataclass(frozen=True, slots=True)
class RuleHit:
    name: str
    score: float
    description: str = ""


@dataclass(frozen=True, slots=True)
class Verdict(_Record):
    """The scoring result for one recipient of one message (mail.verdicts, key: recipient).

    spam_score is on a 0..100 scale; category_scores holds one score per
    category (spam, bulk, adult, ...) so the policy stage can apply each user's
    aggressiveness later without rescoring.
    """

    message_id: str
    tenant: str
    recipient: str
    mail_from: str
    received_at: float
    size: int
    spam_score: float
    category_scores: dict[str, float]
    categories: list[str]
    virus: str | None
    rules: list[dict[str, Any]]
    scorer: str
    raw: bytes
    scored_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class RoutedMessage(_Record):
    """A message for one recipient after policy (mail.deliver / mail.quarantine)."""

    message_id: str
    tenant: str
    recipient: str
    mail_from: str
    action: str  # "deliver" or "quarantine"
    reason: str
    spam_score: float
    virus: str | None
    categories: list[str]
    rules: list[dict[str, Any]]
    received_at: float
    raw: bytes

    @property
    def dedupe_key(self) -> tuple[str, str]:
        return (self.message_id, self.recipient)


@dataclass(frozen=True, slots=True)
class StatsEvent(_Record):
    """Anonymous event for analytics (mail.events, key: tenant).

    Carries no address, IP, subject or message id: only the tenant, the
    decision and coarse buckets. It is the only input of analytics.
    """

    tenant: str
    event_time: float
    verdict: str  # clean | spam | virus | unparseable
    category: str
    action: str  # deliver | quarantine
    size_bytes: int
    spam_score: float
    latency_ms: float
    # Signature family only ("Eicar", "Emotet"), never the full signature name.
    virus_family: str | None = None
    # Opaque, one-way id of the decision (message x recipient x action) so that a
    # replayed decision is counted once; used inside the stream, never stored.
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class StatsWindow(_Record):
    """One tenant's closed, k-anonymous aggregate window (mail.stats, key: tenant).

    Cells with fewer than k messages are already merged into "other" cells, so
    nothing in here describes fewer than k messages by its dimensions. The
    source fields make replays of a window replace its rows instead of adding.
    """

    tenant: str
    window_start: int  # epoch seconds
    window_seconds: int
    source_partition: int
    source_epoch: int  # broker timestamp (ms) of the window's first event
    k: int
    messages: int  # all messages in the window, the version of its rows
    # [verdict, category, action, messages, bytes, spam_score_sum, latency_ms_sum]
    cells: list[list[Any]]
    # [metric, upper bound, messages]; upper bound -1 holds suppressed buckets
    histograms: list[list[Any]]
    # [family, messages]
    virus_families: list[list[Any]]
