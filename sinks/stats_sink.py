"""Stats sink: mail.events -> per-minute counts in ClickHouse, exactly, across restarts.

Offsets of each source partition are cut into fixed chunks. The sink keeps the
cumulative counts of every cell seen in the open chunk, rewrites them with
version = last offset + 1 at each flush, and commits only up to the start of
the open chunk. After a crash it re-reads that chunk from its start, recomputes
the same cells and rewrites them with a version at least as high: the store
(ReplacingMergeTree) keeps one row per cell and chunk, so nothing is counted
twice and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from postwarden.config import Settings
from postwarden.health import HealthServer
from postwarden.records import RecordError, StatsEvent
from postwarden.topics import EVENTS
from sinks.stats_store import DATABASE, StatsRow, StatsStore, StoreError, open_store

log = logging.getLogger(__name__)

CHUNK_OFFSETS = 10_000

EVENTS_READ = Counter("postwarden_stats_events_total", "Anonymous events aggregated")
ROWS_WRITTEN = Counter("postwarden_stats_rows_written_total", "Aggregate rows written to ClickHouse")
WRITE_ERRORS = Counter("postwarden_stats_write_errors_total", "Failed writes to ClickHouse (retried)")
PENDING = Gauge("postwarden_stats_pending_cells", "Cells held in memory awaiting a flush")

CellKey = tuple[int, str, str, str, str]  # minute epoch, tenant, verdict, category, action


@dataclass(slots=True)
class Cell:
    messages: int = 0
    bytes: int = 0
    latency_ms_sum: float = 0.0
    latency_ms_max: float = 0.0
    spam_score_sum: float = 0.0

    def add(self, event: StatsEvent) -> None:
        self.messages += 1
        self.bytes += event.size_bytes
        self.latency_ms_sum += event.latency_ms
        self.latency_ms_max = max(self.latency_ms_max, event.latency_ms)
        self.spam_score_sum += event.spam_score


@dataclass(slots=True)
class Chunk:
    cells: dict[CellKey, Cell]
    epoch: int
    last_offset: int = -1
    dirty: bool = False


class ChunkAggregator:
    """Pure aggregation state, separate from I/O so its arithmetic is testable alone."""

    def __init__(self, chunk_offsets: int = CHUNK_OFFSETS) -> None:
        self.size = chunk_offsets
        self.chunks: dict[tuple[int, int], Chunk] = {}

    def add(self, partition: int, offset: int, timestamp_ms: int, event: StatsEvent) -> None:
        key = (partition, offset // self.size)
        chunk = self.chunks.get(key)
        if chunk is None:
            # Reads always resume at a chunk start, so the first record seen is the same
            # on every replay and its timestamp is a stable epoch for the chunk.
            chunk = self.chunks[key] = Chunk(defaultdict(Cell), timestamp_ms)
        minute = int(event.event_time // 60 * 60)
        chunk.cells[(minute, event.tenant, event.verdict, event.category, event.action)].add(event)
        chunk.last_offset = max(chunk.last_offset, offset)
        chunk.dirty = True

    def rows(self) -> list[StatsRow]:
        out = []
        for (partition, index), chunk in self.chunks.items():
            if not chunk.dirty:
                continue
            for (minute, tenant, verdict, category, action), c in chunk.cells.items():
                out.append(StatsRow(
                    datetime.fromtimestamp(minute, timezone.utc), tenant, verdict, category,
                    action, partition, index, chunk.epoch, c.messages, c.bytes, c.latency_ms_sum,
                    c.latency_ms_max, c.spam_score_sum, chunk.last_offset + 1,
                ))
        return out

    def flushed(self, positions: dict[int, int]) -> dict[int, int]:
        """Mark everything written; drop chunks that are complete; return commit offsets.

        positions: partition -> next offset to read. A chunk is complete once the
        consumer has moved past its end, so it will never be rewritten.
        """
        commits: dict[int, int] = {}
        for (partition, index), chunk in list(self.chunks.items()):
            chunk.dirty = False
            if positions.get(partition, 0) >= (index + 1) * self.size:
                del self.chunks[(partition, index)]
        for partition, position in positions.items():
            open_starts = [i * self.size for (p, i) in self.chunks if p == partition]
            commits[partition] = min(open_starts) if open_starts else position
        return commits

    @property
    def pending_cells(self) -> int:
        return sum(len(c.cells) for c in self.chunks.values())


class StatsSink:
    def __init__(self, settings: Settings, store: StatsStore, group_id: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.group_id = group_id or f"{settings.app_id}-stats-sink"
        self.aggregator = ChunkAggregator()
        self._consumer: AIOKafkaConsumer | None = None
        self._positions: dict[int, int] = {}
        self._store_ok = False
        self._consumer_ok = False

    @property
    def ready(self) -> bool:
        return self._store_ok and self._consumer_ok

    async def run(self, stop: asyncio.Event) -> None:
        await self._migrate(stop)
        self._consumer = AIOKafkaConsumer(
            EVENTS.name,
            bootstrap_servers=self.settings.bootstrap_list,
            group_id=self.group_id,
            client_id="postwarden-stats-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        await self._start_consumer(stop)
        try:
            next_flush = time.monotonic() + self.settings.stats_flush_seconds
            while not stop.is_set():
                batch = await self._consumer.getmany(timeout_ms=500, max_records=5000)
                self._consumer_ok = True
                for tp, records in batch.items():
                    for record in records:
                        self._add(tp.partition, record.offset, record.timestamp, record.value)
                        self._positions[tp.partition] = record.offset + 1
                if time.monotonic() >= next_flush:
                    await self.flush()
                    next_flush = time.monotonic() + self.settings.stats_flush_seconds
            await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await self._consumer.stop()

    def _add(self, partition: int, offset: int, timestamp_ms: int, value: bytes) -> None:
        try:
            event = StatsEvent.decode(value)
        except RecordError as exc:
            log.error("skipping undecodable event", extra={"partition": partition,
                                                           "offset": offset, "reason": str(exc)})
            return
        self.aggregator.add(partition, offset, timestamp_ms, event)
        EVENTS_READ.inc()

    async def flush(self) -> None:
        rows = self.aggregator.rows()
        if rows:
            try:
                await asyncio.to_thread(self.store.insert, rows)
            except StoreError as exc:
                # Keep the cells and the uncommitted offsets: the next flush retries.
                self._store_ok = False
                WRITE_ERRORS.inc()
                log.warning("ClickHouse write failed, will retry", extra={"reason": str(exc)[:300]})
                return
            self._store_ok = True
            ROWS_WRITTEN.inc(len(rows))
        commits = self.aggregator.flushed(dict(self._positions))
        PENDING.set(self.aggregator.pending_cells)
        if commits and self._consumer is not None:
            assigned = {tp.partition for tp in self._consumer.assignment()}
            offsets = {TopicPartition(EVENTS.name, p): o for p, o in commits.items() if p in assigned}
            try:
                if offsets:
                    await self._consumer.commit(offsets)
            except KafkaError as exc:
                # Harmless: uncommitted chunks are re-read and rewritten idempotently.
                log.warning("offset commit failed", extra={"reason": str(exc)[:300]})

    async def _migrate(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.store.migrate)
                self._store_ok = True
                return
            except StoreError as exc:
                log.warning("ClickHouse not available, retrying", extra={"reason": str(exc)[:300]})
                await asyncio.sleep(2.0)

    async def _start_consumer(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._consumer.start()
                return
            except KafkaError as exc:
                log.warning("broker not available, retrying", extra={"reason": str(exc)[:300]})
                await asyncio.sleep(2.0)

    def summary(self, minutes: int = 1440) -> list[dict]:
        rows = self.store.query(
            f"SELECT tenant, verdict, action, sum(messages) FROM {DATABASE}.mail_stats "
            f"WHERE minute >= now() - {int(minutes) * 60} GROUP BY tenant, verdict, action "
            "ORDER BY tenant, verdict, action"
        )
        return [{"tenant": t, "verdict": v, "action": a, "messages": int(n)} for t, v, a, n in rows]


async def run(settings: Settings) -> None:
    store = open_store(settings)
    sink = StatsSink(settings, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    health = None
    if settings.health_port:
        async def stats(request: web.Request) -> web.Response:
            minutes = int(request.query.get("minutes", "1440"))
            return web.json_response(await asyncio.to_thread(sink.summary, minutes))
        health = HealthServer(settings.health_host, settings.health_port, lambda: sink.ready,
                              [web.get("/stats", stats)])
        await health.start()
    try:
        await sink.run(stop)
    finally:
        if health:
            await health.stop()
        store.close()
