"""What waits for delivery, by destination: the view behind `postwarden queue` and the gauges.

The queue is what the delivery consumer group has not finished: records of
mail.deliver and the retry tiers from the group's committed offsets on, less
what the delivered-log already holds, keeping the latest attempt of each
(message id, recipient). The summary carries counts and ages only; addresses
appear only when an operator asks about one message id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from postwarden.records import RecordError, RoutedMessage
from postwarden.topic_scan import records_until_end, scan_consumer
from postwarden.topics import DELIVER, DELIVER_RETRY_TIERS, DELIVERED
from sinks.retry_schedule import DeliveryRetry


@dataclass(frozen=True)
class Waiting:
    message_id: str
    recipient: str
    tenant: str
    destination: str
    received_at: float
    attempts: int
    due_at: float | None  # None: not tried yet (at the head of mail.deliver)
    last_reply: str


@dataclass(frozen=True)
class DestinationRow:
    tenant: str
    destination: str
    waiting: int
    oldest_age: float
    next_attempt_in: float | None
    max_attempts: int


class QueueIndex:
    def __init__(self) -> None:
        self.entries: dict[str, Waiting] = {}

    def offer(self, entry: Waiting) -> None:
        key = f"{entry.message_id}|{entry.recipient}"
        known = self.entries.get(key)
        if known is None or entry.attempts >= known.attempts:
            self.entries[key] = entry

    def discard_done(self, done: set[str]) -> set[str]:
        """Drops the entries with an outcome; returns the keys that had one."""
        matched = done & self.entries.keys()
        for key in matched:
            del self.entries[key]
        return matched

    def summary(self, now: float) -> list[DestinationRow]:
        groups: dict[tuple[str, str], list[Waiting]] = {}
        for e in self.entries.values():
            groups.setdefault((e.tenant, e.destination), []).append(e)
        rows = []
        for (tenant, dest), entries in sorted(groups.items()):
            dues = [e.due_at for e in entries if e.due_at is not None]
            rows.append(DestinationRow(
                tenant, dest, len(entries),
                max(0.0, now - min(e.received_at for e in entries)),
                max(0.0, min(dues) - now) if dues else None,
                max(e.attempts for e in entries)))
        return rows

    def for_message(self, message_id: str) -> list[Waiting]:
        return sorted((e for e in self.entries.values() if e.message_id == message_id),
                      key=lambda e: e.recipient)


@dataclass
class DeliveredSeen:
    """What the scans read of the delivered-log so far: a scanner that keeps one between
    scans reads only the new outcomes, not the log's whole retention every time."""

    done: set[str] = field(default_factory=set)
    # partition -> offset the next read starts at
    positions: dict[int, int] = field(default_factory=dict)


def scan_queue(bootstrap: list[str], group_id: str, partitions: list[int] | None = None,
               destination_of=None, timeout: float = 30.0,
               security: Mapping[str, Any] | None = None, seen: DeliveredSeen | None = None) -> QueueIndex:
    """Reads the unfinished part of the delivery topics (blocking; run it in a thread)."""
    index = QueueIndex()
    seen = seen if seen is not None else DeliveredSeen()
    consumer = scan_consumer(bootstrap, group_id, security)
    try:
        known = consumer.partitions_for_topic(DELIVER.name) or set()
        wanted = sorted(known if partitions is None else set(partitions) & known)
        logs = [TopicPartition(DELIVERED.name, p) for p in wanted]
        starts = {tp: seen.positions[tp.partition] for tp in logs if tp.partition in seen.positions}
        for tp, record in records_until_end(consumer, logs, False, timeout, starts):
            if record.key is not None:
                seen.done.add(record.key.decode())
        for tp in logs:
            seen.positions[tp.partition] = consumer.position(tp)
        sources = [TopicPartition(t, p) for t in (DELIVER.name, *(s.name for s in DELIVER_RETRY_TIERS))
                   for p in wanted]
        for tp, record in records_until_end(consumer, sources, True, timeout):
            with contextlib.suppress(RecordError):
                if tp.topic == DELIVER.name:
                    msg = RoutedMessage.decode(record.value)
                    index.offer(Waiting(msg.message_id, msg.recipient, msg.tenant,
                                        destination_of(msg.tenant) if destination_of else "",
                                        msg.received_at, 0, None, ""))
                else:
                    r = DeliveryRetry.decode(record.value)
                    index.offer(Waiting(r.message_id, r.message().recipient, r.tenant,
                                        r.destination, r.received_at, r.attempt, r.due_at,
                                        r.last_reply))
        # An outcome whose record was not read here is behind the committed offsets:
        # no later scan needs it.
        seen.done = index.discard_done(seen.done)
        return index
    finally:
        consumer.close(autocommit=False)
