"""Stats windows: mail.events -> closed, k-anonymous tumbling windows on mail.stats.

This is the last stage that sees single events. Each window holds one
tenant's counts by (verdict, category, action), histograms of spam score,
size and end-to-end latency, and virus detections by signature family. When
it closes, every cell with fewer than k messages is merged into an "other"
cell, and only then does the window leave the stream.

Windows are closed by event time: a window [s, s+w) closes once an event at
s+w+grace is seen on its partition, or, when a partition has nothing more to
read, once the wall clock passes s+w+grace. Later events are dropped (and
counted in a metric).

Replays never double counts and are exact without any state store (Faust
tables are at-least-once here, and the local broker cuts table recovery
short). The rule that makes it work: the offset committed is always the first
offset of the oldest window still open, and only while that window is the
"floor" (the first window not yet closed). A consumer that resumes there sets
its floor from the first event it reads, skips events of older windows (they
were emitted before) and rebuilds every newer window from all of its events.
Re-emitted windows carry the same keys and a version (their message count) at
least as high, so the store keeps one copy. One visible difference exists: a
replay may include events that arrived after grace the first time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from postwarden.config import Settings
from postwarden.kafka_security import client_kwargs
from postwarden.process_lifecycle import start_when_reachable
from postwarden.records import RecordError, StatsEvent, StatsWindow
from postwarden.topics import EVENTS, STATS
from streams.stats_events import RELEASE

log = logging.getLogger(__name__)

OTHER = "other"
# Upper bounds of the histogram buckets; OVERFLOW is the last bucket ("+Inf"),
# SUPPRESSED the bucket that holds buckets with fewer than k messages.
OVERFLOW = 1e15
SUPPRESSED = -1.0
HISTOGRAMS: dict[str, tuple[float, ...]] = {
    "spam_score": (10, 20, 30, 40, 50, 60, 70, 80, 90, 100, OVERFLOW),
    "size_bytes": (4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, OVERFLOW),
    "latency_ms": (50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, OVERFLOW),
}

EVENTS_IN = Counter("postwarden_stats_window_events_total", "Anonymous events added to windows")
LATE = Counter("postwarden_stats_late_events_total", "Events that arrived after their window closed")
INVALID = Counter("postwarden_stats_invalid_events_total", "mail.events records that could not be decoded")
WINDOWS_OUT = Counter("postwarden_stats_windows_emitted_total", "Closed windows written to mail.stats")
LAG = Gauge("postwarden_stats_consumer_lag", "Events on mail.events not yet read by the stats windows")
OPEN = Gauge("postwarden_stats_open_windows", "Windows held open in memory")


def bucket(metric: str, value: float) -> float:
    bounds = HISTOGRAMS[metric]
    return bounds[min(bisect.bisect_left(bounds, value), len(bounds) - 1)]


@dataclass(slots=True)
class _Cell:
    messages: int = 0
    bytes: int = 0
    spam_score_sum: float = 0.0
    latency_ms_sum: float = 0.0


@dataclass
class Window:
    tenant: str
    start: int
    first_offset: int
    epoch: int
    messages: int = 0
    cells: dict[tuple[str, str, str], _Cell] = field(default_factory=lambda: defaultdict(_Cell))
    buckets: dict[tuple[str, float], int] = field(default_factory=lambda: defaultdict(int))
    families: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, event: StatsEvent) -> None:
        self.messages += 1
        cell = self.cells[(event.verdict, event.category, event.action)]
        cell.messages += 1
        cell.bytes += event.size_bytes
        cell.spam_score_sum += event.spam_score
        self.buckets[("spam_score", bucket("spam_score", event.spam_score))] += 1
        self.buckets[("size_bytes", bucket("size_bytes", event.size_bytes))] += 1
        # A release's latency is its time in quarantine, not time through the pipeline.
        if event.action != RELEASE:
            cell.latency_ms_sum += event.latency_ms
            self.buckets[("latency_ms", bucket("latency_ms", event.latency_ms))] += 1
        if event.virus_family:
            self.families[event.virus_family] += 1

    def close(self, k: int, window_seconds: int, partition: int) -> StatsWindow:
        """The k-anonymous form. Suppression is monotone (a cell reported for some
        events stays reported for more) and the "other" cells are always present,
        so a fuller replay of this window overwrites every row of a thinner one."""
        other = _Cell()
        cells = []
        for (verdict, category, action), c in sorted(self.cells.items()):
            if c.messages >= k:
                cells.append([verdict, category, action, c.messages, c.bytes,
                              c.spam_score_sum, c.latency_ms_sum])
            else:
                other.messages += c.messages
                other.bytes += c.bytes
                other.spam_score_sum += c.spam_score_sum
                other.latency_ms_sum += c.latency_ms_sum
        cells.append([OTHER, OTHER, OTHER, other.messages, other.bytes,
                      other.spam_score_sum, other.latency_ms_sum])
        suppressed = dict.fromkeys(HISTOGRAMS, 0)
        histograms = []
        for (metric, le), n in sorted(self.buckets.items()):
            if n >= k:
                histograms.append([metric, le, n])
            else:
                suppressed[metric] += n
        histograms += [[metric, SUPPRESSED, n] for metric, n in suppressed.items()]
        families = [[f, n] for f, n in sorted(self.families.items()) if n >= k and f != OTHER]
        families.append([OTHER, sum(n for f, n in self.families.items() if n < k or f == OTHER)])
        return StatsWindow(
            tenant=self.tenant, window_start=self.start, window_seconds=window_seconds,
            source_partition=partition, source_epoch=self.epoch, k=k, messages=self.messages,
            cells=cells, histograms=histograms, virus_families=families,
        )


# How long a decision's id is remembered: longer than a worker needs to crash,
# lose its group membership and have its partitions replayed elsewhere.
DEDUPE_SECONDS = 600.0


class PartitionWindows:
    """Open windows of one mail.events partition; pure state, no I/O."""

    def __init__(self, partition: int, window_seconds: int, grace: float, k: int) -> None:
        self.partition, self.size, self.grace, self.k = partition, window_seconds, grace, k
        self.open: dict[tuple[str, int], Window] = {}
        # First window start not yet closed; None until the first event after (re)start.
        self.floor: int | None = None
        self.watermark = float("-inf")
        self.committable: int | None = None
        # event_id -> event time of decisions counted lately. A worker that crashed
        # replays its last decisions with a new routing time, i.e. into a later window,
        # so window keys alone cannot collapse them; ids are kept for DEDUPE_SECONDS.
        self.seen: dict[str, float] = {}

    def add(self, offset: int, timestamp_ms: int, event: StatsEvent) -> bool:
        """False if the event is late (its window was closed already)."""
        if event.event_id is not None:
            if event.event_id in self.seen:
                return True
            self.seen[event.event_id] = event.event_time
        start = int(event.event_time // self.size * self.size)
        if self.floor is None:
            self.floor = start
        if start < self.floor:
            return False
        window = self.open.get((event.tenant, start))
        if window is None:
            window = self.open[(event.tenant, start)] = Window(event.tenant, start, offset, timestamp_ms)
        window.add(event)
        self.watermark = max(self.watermark, event.event_time)
        return True

    def close_due(self, wall_now: float | None = None) -> list[StatsWindow]:
        """Close windows whose end + grace is behind the watermark (or behind the
        wall clock, which callers pass only for a partition that is read to its end)."""
        bound = self.watermark - self.grace
        if wall_now is not None:
            bound = max(bound, wall_now - self.grace)
        if self.floor is None or bound == float("-inf"):
            return []
        out = []
        for key in sorted(self.open, key=lambda k: k[1]):
            window = self.open[key]
            if window.start + self.size <= bound:
                out.append(window.close(self.k, self.size, self.partition))
                del self.open[key]
        self.floor = max(self.floor, int(bound // self.size * self.size))
        self._update_commit()
        horizon = self.watermark - DEDUPE_SECONDS
        if self.seen and min(self.seen.values()) < horizon:
            self.seen = {i: t for i, t in self.seen.items() if t >= horizon}
        return out

    def _update_commit(self) -> None:
        if not self.open:
            return  # keep the last commit point: replaying one emitted window is harmless
        oldest = min(self.open.values(), key=lambda w: w.first_offset)
        if oldest.start == self.floor:
            self.committable = oldest.first_offset


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: StatsWindows) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # The next owner resumes from the committed offset and rebuilds these windows.
        for tp in revoked:
            self.owner.partitions.pop(tp.partition, None)
            self.owner.committed.pop(tp.partition, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass


class StatsWindows:
    """The consumer-group process around PartitionWindows."""

    def __init__(self, settings: Settings, group_id: str | None = None) -> None:
        self.settings = settings
        self.group_id = group_id or f"{settings.app_id}-stats-windows"
        self.partitions: dict[int, PartitionWindows] = {}
        self.committed: dict[int, int] = {}
        self.ready = False

    def _windows(self, partition: int) -> PartitionWindows:
        pw = self.partitions.get(partition)
        if pw is None:
            s = self.settings
            pw = self.partitions[partition] = PartitionWindows(
                partition, s.stats_window_seconds, s.stats_grace_seconds, s.stats_k_anonymity)
        return pw

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_list, group_id=self.group_id,
            client_id="postwarden-stats-windows", enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000,
            **client_kwargs(self.settings),
        )
        consumer.subscribe([EVENTS.name], listener=_Rebalance(self))
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_list, acks="all",
                                    client_id="postwarden-stats-windows",
                                    **client_kwargs(self.settings))
        await start_when_reachable(consumer, stop)
        await start_when_reachable(producer, stop)
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                self.ready = True
                for tp, records in batch.items():
                    pw = self._windows(tp.partition)
                    for record in records:
                        self._add(pw, record)
                now = time.time()
                closed: list[StatsWindow] = []
                for partition, pw in self.partitions.items():
                    read_up = TopicPartition(EVENTS.name, partition) not in batch
                    closed += pw.close_due(now if read_up else None)
                await self._emit(producer, closed)
                await self._commit(consumer)
                await self._measure(consumer)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await producer.stop()

    def _add(self, pw: PartitionWindows, record) -> None:
        try:
            event = StatsEvent.decode(record.value)
        except RecordError as exc:
            INVALID.inc()
            log.error("skipping undecodable event", extra={
                "partition": record.partition, "offset": record.offset, "reason": str(exc)})
            return
        if pw.add(record.offset, record.timestamp, event):
            EVENTS_IN.inc()
        else:
            LATE.inc()

    async def _emit(self, producer: AIOKafkaProducer, windows: list[StatsWindow]) -> None:
        if not windows:
            return
        futures = [await producer.send(STATS.name, w.encode(), key=w.tenant.encode()) for w in windows]
        # Committing waits for these acks: a window is either on mail.stats or re-read.
        await asyncio.gather(*futures)
        WINDOWS_OUT.inc(len(windows))

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        assigned = {tp.partition for tp in consumer.assignment()}
        offsets = {
            TopicPartition(EVENTS.name, p): pw.committable
            for p, pw in self.partitions.items()
            if p in assigned and pw.committable is not None and self.committed.get(p) != pw.committable
        }
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
            self.committed.update({tp.partition: o for tp, o in offsets.items()})
        except KafkaError as exc:
            log.warning("offset commit failed", extra={"reason": str(exc)[:300]})

    async def _measure(self, consumer: AIOKafkaConsumer) -> None:
        lag = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                lag += max(0, high - await consumer.position(tp))
        LAG.set(lag)
        OPEN.set(sum(len(pw.open) for pw in self.partitions.values()))
