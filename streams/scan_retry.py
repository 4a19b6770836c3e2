"""Mail whose virus scan could not happen, and how it is scanned again.

When clamd is unreachable the score agent does not route the message: it puts
it on mail.rescan (key: message id), out of every user's quarantine. The
rescan agent takes the head of each partition, waits with backoff until clamd
answers, scores the message again through the same engine and only then
sends its verdicts, so the policy stage routes it by its real result. The
source offset is committed after the verdicts are written, so a worker
restart replays the head instead of losing it; a replay can only repeat a
verdict, which the sinks absorb (keyed by message id + recipient).

A rebalance waits for every agent to finish its current record, so a head
waiting for clamd would stall the whole group for as long as clamd is down:
when one starts, the waiting head is put back at the tail of its partition
(same key, same partition) and acknowledged instead.

Mail still unscanned after POSTWARDEN_RESCAN_MAX_AGE is routed with its
SCAN-UNAVAILABLE verdict and held, as it was before rescans existed. Nothing
is ever passed unscanned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from postwarden.records import Envelope, RecordError, _Record
from postwarden.topics import RESCAN
from streams.scorer import ScoreResult

log = logging.getLogger(__name__)

# Scans that fail while clamd answers PING fail because of this message (a size
# limit, say): after this many the message is held instead of blocking its partition.
MAX_FAILURES_WHILE_UP = 3
FIRST_BACKOFF = 1.0


def scan_failed(result: ScoreResult) -> bool:
    return "scan_failed" in result.categories


@dataclass(frozen=True, slots=True)
class ScanRetry(_Record):
    """A message waiting for its virus scan (mail.rescan, key: message id).

    The metadata sits beside the mail so `postwarden queue` can count and age
    the queue without decoding the envelope.
    """

    message_id: str
    tenant: str
    received_at: float
    deferred_at: float
    envelope: bytes  # Envelope.encode()
    raw: bytes

    @classmethod
    def of(cls, envelope: Envelope, raw: bytes, now: float) -> ScanRetry:
        return cls(envelope.message_id, envelope.tenant, envelope.received_at, now,
                   envelope.encode(), raw)

    def decoded_envelope(self) -> Envelope:
        return Envelope.decode(self.envelope)


@dataclass(frozen=True)
class Rescanned:
    # None when requeued: the message goes back on mail.rescan unrouted.
    result: ScoreResult | None
    # The verdict label once scanned; "expired" or "failing" when held unscanned;
    # "requeued" when it stopped waiting for a rebalance.
    outcome: str
    waited: float


# How often a wait for clamd looks whether it should give way to a rebalance.
YIELD_CHECK = 0.25


class Rescanner:
    """Scores one waiting message again once clamd answers; never returns an unscanned pass.

    ``score`` is the engine's score; ``ping`` asks clamd whether it is up;
    ``should_yield`` says a rebalance wants the record back.
    """

    def __init__(self, score: Callable[[bytes, Envelope], Awaitable[ScoreResult]],
                 ping: Callable[[], Awaitable[bool]], max_age: float, backoff_max: float,
                 clock: Callable[[], float] = time.time,
                 on_wait: Callable[[bool], None] | None = None,
                 should_yield: Callable[[], bool] | None = None) -> None:
        self.score, self.ping = score, ping
        self.max_age, self.backoff_max = max_age, backoff_max
        self.clock = clock
        self.on_wait = on_wait or (lambda waiting: None)
        self.should_yield = should_yield or (lambda: False)

    async def rescan(self, retry: ScanRetry, envelope: Envelope | None = None) -> Rescanned:
        envelope = envelope or retry.decoded_envelope()
        deadline = retry.received_at + self.max_age
        started = self.clock()
        failures_while_up = 0
        backoff = FIRST_BACKOFF
        try:
            while True:
                result = await self.score(retry.raw, envelope)
                if not scan_failed(result):
                    return Rescanned(result, result.verdict, self.clock() - started)
                if self.clock() >= deadline:
                    return Rescanned(result, "expired", self.clock() - started)
                if await self.ping():
                    failures_while_up += 1
                    if failures_while_up >= MAX_FAILURES_WHILE_UP:
                        return Rescanned(result, "failing", self.clock() - started)
                    await asyncio.sleep(min(backoff, max(0.0, deadline - self.clock())))
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
                self.on_wait(True)
                backoff = await self._wait_for_clamd(deadline, backoff)
                if backoff is None:
                    return Rescanned(None, "requeued", self.clock() - started)
        finally:
            self.on_wait(False)

    async def _wait_for_clamd(self, deadline: float, backoff: float) -> float | None:
        """Until clamd answers PING or the deadline passes; returns the next backoff,
        None when a rebalance wants the record back first."""
        while self.clock() < deadline:
            pause_until = self.clock() + min(backoff, max(0.0, deadline - self.clock()))
            while (left := pause_until - self.clock()) > 0:
                if self.should_yield():
                    return None
                await asyncio.sleep(min(left, YIELD_CHECK))
            backoff = min(backoff * 2, self.backoff_max)
            if await self.ping():
                break
        return backoff


@dataclass(frozen=True)
class RescanQueue:
    waiting: int
    oldest_age: float


def scan_rescan_queue(bootstrap: list[str], group_id: str, timeout: float = 30.0,
                      security: Mapping[str, Any] | None = None,
                      now: float | None = None) -> RescanQueue:
    """What the rescan agent's group has not finished on mail.rescan (blocking).

    Counts distinct message ids from the group's committed offsets to the end.
    """
    from kafka import TopicPartition

    from postwarden.topic_scan import records_until_end, scan_consumer

    consumer = scan_consumer(bootstrap, group_id, security)
    received: dict[str, float] = {}
    try:
        tps = [TopicPartition(RESCAN.name, p)
               for p in sorted(consumer.partitions_for_topic(RESCAN.name) or ())]
        for _, record in records_until_end(consumer, tps, True, timeout):
            with contextlib.suppress(RecordError):
                retry = ScanRetry.decode(record.value)
                received[retry.message_id] = retry.received_at
    finally:
        consumer.close(autocommit=False)
    now = time.time() if now is None else now
    oldest = max((now - r for r in received.values()), default=0.0)
    return RescanQueue(len(received), max(0.0, oldest))
