"""Stats sink: closed k-anonymous windows (mail.stats) -> ClickHouse, in batches.

Windows are buffered for POSTWARDEN_STATS_FLUSH_SECONDS and written table by
table; offsets are committed only after the write, so a crash replays
windows, whose rows replace themselves (see stats_store). The process also
runs the stats windows stage (streams/stats_windows.py) and, when an operator
password hash is configured, the operator overview page: on one machine the
embedded store can be opened by one process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from postwarden.config import Settings
from postwarden.health import HealthServer
from postwarden.kafka_security import client_kwargs
from postwarden.records import RecordError, StatsWindow
from postwarden.topics import STATS
from postwarden.process_lifecycle import stop_on_signals
from sinks.stats_store import DATABASE, StatsStore, StoreError, WindowRows, open_store
from streams.stats_windows import StatsWindows

log = logging.getLogger(__name__)

WINDOWS_READ = Counter("postwarden_stats_windows_read_total", "Closed windows read from mail.stats")
ROWS_WRITTEN = Counter("postwarden_stats_rows_written_total", "Aggregate rows written to ClickHouse")
WRITE_ERRORS = Counter("postwarden_stats_write_errors_total", "Failed writes to ClickHouse (retried)")
PENDING = Gauge("postwarden_stats_pending_rows", "Rows held in memory awaiting a flush")


class StatsSink:
    def __init__(self, settings: Settings, store: StatsStore, group_id: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.group_id = group_id or f"{settings.app_id}-stats-sink"
        self.rows = WindowRows()
        self._positions: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._store_ok = False
        self._consumer_ok = False

    @property
    def ready(self) -> bool:
        return self._store_ok and self._consumer_ok

    async def run(self, stop: asyncio.Event) -> None:
        await self._migrate(stop)
        self._consumer = AIOKafkaConsumer(
            STATS.name, bootstrap_servers=self.settings.bootstrap_list, group_id=self.group_id,
            client_id="postwarden-stats-sink", enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000,
            **client_kwargs(self.settings),
        )
        while not stop.is_set():
            try:
                await self._consumer.start()
                break
            except KafkaError as exc:
                log.warning("broker not available, retrying", extra={"reason": str(exc)[:300]})
                await asyncio.sleep(2.0)
        try:
            next_flush = time.monotonic() + self.settings.stats_flush_seconds
            while not stop.is_set():
                batch = await self._consumer.getmany(timeout_ms=500, max_records=5000)
                self._consumer_ok = True
                for tp, records in batch.items():
                    for record in records:
                        self._add(record)
                        self._positions[tp.partition] = record.offset + 1
                if time.monotonic() >= next_flush:
                    await self.flush()
                    next_flush = time.monotonic() + self.settings.stats_flush_seconds
            await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await self._consumer.stop()

    def _add(self, record) -> None:
        try:
            window = StatsWindow.decode(record.value)
        except RecordError as exc:
            log.error("skipping undecodable window", extra={
                "partition": record.partition, "offset": record.offset, "reason": str(exc)})
            return
        self.rows.add(window)
        WINDOWS_READ.inc()
        PENDING.set(len(self.rows))

    async def flush(self) -> None:
        rows = self.rows
        if len(rows):
            try:
                await asyncio.to_thread(self.store.write, rows)
            except StoreError as exc:
                # Keep the rows and the uncommitted offsets: the next flush retries.
                self._store_ok = False
                WRITE_ERRORS.inc()
                log.warning("ClickHouse write failed, will retry", extra={"reason": str(exc)[:300]})
                return
            self._store_ok = True
            ROWS_WRITTEN.inc(len(rows))
            self.rows = WindowRows()
            PENDING.set(0)
        if self._positions and self._consumer is not None:
            assigned = {tp.partition for tp in self._consumer.assignment()}
            offsets = {TopicPartition(STATS.name, p): o for p, o in self._positions.items() if p in assigned}
            try:
                if offsets:
                    await self._consumer.commit(offsets)
                self._positions.clear()
            except KafkaError as exc:
                # Harmless: uncommitted windows are re-read and rewritten idempotently.
                log.warning("offset commit failed", extra={"reason": str(exc)[:300]})

    def summary(self, minutes: int = 1440) -> list[dict]:
        return summary(self.store, minutes)

    async def _migrate(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.store.migrate)
                self._store_ok = True
                return
            except StoreError as exc:
                log.warning("ClickHouse not available, retrying", extra={"reason": str(exc)[:300]})
                await asyncio.sleep(2.0)


def summary(store: StatsStore, minutes: int = 1440) -> list[dict]:
    rows = store.query(
        f"SELECT tenant, verdict, action, sum(messages) FROM {DATABASE}.mail_stats "
        f"WHERE minute >= now() - {int(minutes) * 60} GROUP BY tenant, verdict, action "
        "ORDER BY tenant, verdict, action"
    )
    return [{"tenant": t, "verdict": v, "action": a, "messages": int(n)} for t, v, a, n in rows]


async def run(settings: Settings) -> None:
    store = open_store(settings)
    sink = StatsSink(settings, store)
    windows = StatsWindows(settings)
    stop = stop_on_signals()
    servers = []
    if settings.health_port:
        async def stats(request: web.Request) -> web.Response:
            minutes = int(request.query.get("minutes", "1440"))
            return web.json_response(await asyncio.to_thread(sink.summary, minutes))
        servers.append(HealthServer(settings.health_host, settings.health_port,
                                    lambda: sink.ready and windows.ready, [web.get("/stats", stats)]))
    if settings.operator_password_hash and settings.overview_port:
        from sinks.overview_page import OverviewServer

        try:
            servers.append(OverviewServer(settings, store))
        except ValueError as exc:  # a malformed password hash: say so and stop
            store.close()
            raise SystemExit(f"postwarden: {exc}") from None
    for server in servers:
        await server.start()
    try:
        tasks = [asyncio.create_task(sink.run(stop)), asyncio.create_task(windows.run(stop))]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for server in servers:
            await server.stop()
        store.close()
