"""Delivery sink: mail.deliver and its retry tiers -> the tenants' mailbox servers by SMTP.

For each record, in this order: skip it if the delivered-log already holds its
(message id, recipient); relay it; then write what happened before the source
offset may be committed: the outcome to the delivered-log (delivered or
bounced, plus the DSN on mail.deliver), or the message to the next retry tier.
Records of one partition are relayed concurrently (limited per downstream
server); offsets are committed up to the oldest record still in flight.

A retry tier is read in order and every record in it waits the same delay, so
when its head is not due yet the partition is paused at that offset until it
is: nothing is held in memory, and a restarted worker picks up where the
committed offsets say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from postwarden import state_dir
from postwarden.config import Settings, Tenant, Tenants
from postwarden.kafka_security import client_kwargs
from postwarden.process_lifecycle import RebalanceRelay, serve, start_when_reachable
from postwarden.records import RecordError, RoutedMessage
from postwarden.topics import DELIVER, DELIVER_RETRY_TIERS, DELIVERED
from sinks import delivery_log
from sinks.delivered_keys import DeliveredKeys
from sinks.delivery_log import DeliveryOutcome, log_key
from sinks.dsn import build_dsn, dsn_message_id
from sinks.generated_mail import routed as generated
from sinks.kafka_output import send_until_acked
from sinks.outbound_queue import DeliveredSeen, QueueIndex, scan_queue
from sinks.retry_schedule import DeliveryRetry, RetrySchedule
from sinks.smtp_relay import Outcome, SmtpRelay

log = logging.getLogger(__name__)

ATTEMPTS = Counter("postwarden_delivery_attempts_total", "SMTP delivery attempts",
                   ["tenant", "destination"])
OUTCOMES = Counter("postwarden_delivery_outcomes_total", "Results of delivery attempts",
                   ["tenant", "outcome"])  # delivered|deferred|bounced|expired|duplicate
QUEUE_DEPTH = Gauge("postwarden_delivery_queue_depth",
                    "Messages waiting for a retry, by destination", ["tenant", "destination"])
OLDEST_AGE = Gauge("postwarden_delivery_oldest_message_age_seconds",
                   "Age of the oldest message waiting, by destination", ["tenant", "destination"])
IN_FLIGHT = Gauge("postwarden_delivery_in_flight", "Messages being relayed now")

SOURCE_TOPICS = (DELIVER.name, *(t.name for t in DELIVER_RETRY_TIERS))
MAX_IN_FLIGHT = 500
QUEUE_SCAN_SECONDS = 30.0


def destination(tenant: Tenant | None) -> str:
    """Label for a tenant's downstream set: its preferred server."""
    if tenant is None:
        return "unknown"
    first = min(tenant.downstream, key=lambda d: d.priority)
    return f"{first.host}:{first.port}"


@dataclass
class _Offsets:
    """Offsets of one partition in flight; the commit point is the oldest unfinished one."""

    in_flight: set[int] = field(default_factory=set)
    next_offset: int = -1

    def start(self, offset: int) -> None:
        self.in_flight.add(offset)
        self.next_offset = max(self.next_offset, offset + 1)

    def finish(self, offset: int) -> None:
        self.in_flight.discard(offset)

    def commit_point(self) -> int:
        return min(self.in_flight) if self.in_flight else self.next_offset


@dataclass
class _Work:
    tp: TopicPartition
    offset: int
    message: RoutedMessage
    attempt: int  # attempts made before this one
    first_attempt_at: float | None


class DeliverySink:
    def __init__(self, settings: Settings, tenants: Tenants | None = None,
                 clock: Callable[[], float] = time.time, group_id: str | None = None) -> None:
        self.settings = settings
        self.tenants = tenants or settings.tenants()
        self.clock = clock
        self.group_id = group_id or self.group_name(settings)
        self.schedule = RetrySchedule(settings.retry_delays)
        self.relay = SmtpRelay(settings.smtp_hostname, settings.delivery_timeout)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._offsets: dict[TopicPartition, _Offsets] = {}
        # Per partition, the delivered-log's keys: filled when the partition is assigned.
        self._done: dict[int, DeliveredKeys] = {}
        self._state: Path | None = None
        self._resume_at: dict[TopicPartition, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._busy: dict[str, asyncio.Event] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._stop: asyncio.Event | None = None
        self._assigned = False
        self.queue = QueueIndex()
        self._delivered_seen = DeliveredSeen()

    @property
    def ready(self) -> bool:
        return self._assigned

    @staticmethod
    def group_name(settings: Settings) -> str:
        return f"{settings.app_id}-delivery"

    # --- loop -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._state = state_dir.claim(self.settings.data_dir / "delivery")
        bootstrap = self.settings.bootstrap_list
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, client_id="postwarden-delivery", acks="all",
            enable_idempotence=False, max_request_size=self.settings.max_record_bytes,
            linger_ms=1, **client_kwargs(self.settings))
        self._consumer = AIOKafkaConsumer(
            *SOURCE_TOPICS, bootstrap_servers=bootstrap, group_id=self.group_id,
            **client_kwargs(self.settings),
            client_id="postwarden-delivery", enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000,
            max_poll_interval_ms=600_000, fetch_max_wait_ms=self.settings.consumer_fetch_wait_ms,
            fetch_max_bytes=max(52_428_800, self.settings.max_message_size * 2),
            max_partition_fetch_bytes=self.settings.max_record_bytes,
            # Range assignment gives partition p of every delivery topic to the same
            # member: the delivered-log partition it loads covers all its records.
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        await start_when_reachable(self._producer, self._stop)
        self._consumer.subscribe(list(SOURCE_TOPICS), listener=RebalanceRelay(self))
        await start_when_reachable(self._consumer, self._stop)
        scanner = asyncio.create_task(self._scan_queue_forever())
        try:
            next_commit = time.monotonic() + self.settings.delivery_commit_seconds
            while not stop.is_set():
                self._resume_due()
                batch = await self._consumer.getmany(timeout_ms=200, max_records=200)
                for tp, records in batch.items():
                    for record in records:
                        if not await self._take(tp, record):
                            break
                if time.monotonic() >= next_commit:
                    await self._commit()
                    next_commit = time.monotonic() + self.settings.delivery_commit_seconds
            await self._drain()
            await self._commit()
        finally:
            scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scanner
            await self.relay.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._consumer.stop(), 15)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), 15)

    async def _take(self, tp: TopicPartition, record) -> bool:
        """Start work on one record; False when the partition was paused at it."""
        assert self._consumer is not None
        if tp in self._resume_at:
            return False
        if tp.partition not in self._done:
            # The fetcher can hand out records before the rebalance listener has loaded
            # this partition's delivered-log: read them again once it has.
            self._consumer.seek(tp, record.offset)
            return False
        now = self.clock()
        try:
            if tp.topic == DELIVER.name:
                work = _Work(tp, record.offset, RoutedMessage.decode(record.value), 0, None)
            else:
                retry = DeliveryRetry.decode(record.value)
                if retry.due_at > now:
                    # Everything behind it in this tier is due later still.
                    self._consumer.seek(tp, record.offset)
                    self._consumer.pause(tp)
                    self._resume_at[tp] = retry.due_at
                    return False
                work = _Work(tp, record.offset, retry.message(), retry.attempt,
                             retry.first_attempt_at)
        except RecordError as exc:
            log.error("skipping undecodable record", extra={
                "topic": tp.topic, "partition": tp.partition, "offset": record.offset,
                "reason": str(exc)})
            self._offsets.setdefault(tp, _Offsets()).start(record.offset)
            self._offsets[tp].finish(record.offset)
            return True
        await self._slots.acquire()
        self._offsets.setdefault(tp, _Offsets()).start(record.offset)
        task = asyncio.create_task(self._handle(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _resume_due(self) -> None:
        assert self._consumer is not None
        now = self.clock()
        for tp, due in list(self._resume_at.items()):
            if due <= now:
                del self._resume_at[tp]
                if tp in self._consumer.assignment():
                    self._consumer.resume(tp)

    # --- one message ------------------------------------------------------

    async def _handle(self, work: _Work) -> None:
        IN_FLIGHT.inc()
        key = log_key(work.message.message_id, work.message.recipient)
        try:
            # The same recipient can be in flight twice after a replay: let the first finish.
            while key in self._busy:
                await self._busy[key].wait()
            self._busy[key] = asyncio.Event()
            try:
                await self._deliver(work, key)
            finally:
                self._busy.pop(key).set()
            self._offsets[work.tp].finish(work.offset)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Leave the offset uncommitted: a restart tries this record again.
            log.exception("delivery failed unexpectedly", extra={
                "message_id": work.message.message_id, "tenant": work.message.tenant})
            assert self._stop is not None
            self._stop.set()
        finally:
            IN_FLIGHT.dec()
            self._slots.release()

    async def _deliver(self, work: _Work, key: str) -> None:
        msg = work.message
        partition = work.tp.partition
        tenant = self.tenants.get(msg.tenant)
        dest = destination(tenant)
        done = self._done.get(partition)
        if done is not None and key in done:
            OUTCOMES.labels(msg.tenant, "duplicate").inc()
            log.info("already delivered, skipped", extra={"message_id": msg.message_id,
                                                            "tenant": msg.tenant})
            return
        if msg.action != "deliver":
            log.error("record on mail.deliver is not for delivery, skipped", extra={
                "message_id": msg.message_id, "tenant": msg.tenant, "status": msg.action})
            return
        now = self.clock()
        first_attempt_at = work.first_attempt_at or now
        attempt = work.attempt + 1
        if tenant is None:
            # A tenants file being rolled out can lag the records: wait, do not bounce yet.
            outcome = Outcome("temporary", "451 4.3.5 tenant not configured for delivery", "")
            max_days = 5.0
        else:
            ATTEMPTS.labels(msg.tenant, dest).inc()
            outcome = await self.relay.deliver(tenant.downstream, msg.mail_from, msg.recipient,
                                               msg.raw)
            max_days = tenant.max_retry_days
        extra = {"message_id": msg.message_id, "tenant": msg.tenant, "attempt": attempt,
                 "code": outcome.reply[:3]}
        if outcome.kind == "delivered":
            await self._record(partition, key, msg.tenant, "delivered", outcome.destination)
            OUTCOMES.labels(msg.tenant, "delivered").inc()
            log.info("delivered", extra=extra)
            return
        if outcome.kind == "temporary":
            plan = self.schedule.next(attempt, first_attempt_at, max_days, self.clock())
            if plan is not None:
                retry = DeliveryRetry(
                    message_id=msg.message_id, tenant=msg.tenant, destination=dest,
                    received_at=msg.received_at, first_attempt_at=first_attempt_at,
                    attempt=attempt, due_at=plan.due_at, last_reply=outcome.reply[:500],
                    routed=msg.encode())
                await self._send(plan.topic.name, msg.tenant.encode(), retry.encode(), partition)
                OUTCOMES.labels(msg.tenant, "deferred").inc()
                log.info("deferred", extra=extra)
                return
            await self._bounce(work, key, "4.4.7",
                               f"{outcome.reply} (retried for {max_days:g} days)", outcome)
            OUTCOMES.labels(msg.tenant, "expired").inc()
            log.warning("retries expired, bounced", extra=extra)
            return
        await self._bounce(work, key, outcome.status, outcome.reply, outcome)
        OUTCOMES.labels(msg.tenant, "bounced").inc()
        log.warning("refused downstream, bounced", extra=extra)

    async def _bounce(self, work: _Work, key: str, status: str, diagnostic: str,
                      outcome: Outcome) -> None:
        msg = work.message
        if msg.mail_from:  # never answer the null sender: that is how bounce loops start
            now = self.clock()
            raw = build_dsn(msg, status, diagnostic, outcome.destination.rpartition(":")[0] or None,
                            self.settings.smtp_hostname, now)
            dsn = generated(msg.tenant, msg.mail_from, raw, dsn_message_id(msg), "dsn", now)
            await self._send(DELIVER.name, msg.tenant.encode(), dsn.encode(), None)
        await self._record(work.tp.partition, key, msg.tenant, "bounced", outcome.destination)

    async def _record(self, partition: int, key: str, tenant: str, outcome: str,
                      dest: str) -> None:
        value = DeliveryOutcome(tenant, outcome, self.clock(), dest).encode()
        await self._send(DELIVERED.name, key.encode(), value, partition)
        done = self._done.get(partition)
        if done is not None:  # else revoked meanwhile: its next owner reads the log
            done.add(key)

    async def _send(self, topic: str, key: bytes, value: bytes, partition: int | None) -> None:
        assert self._producer is not None
        await send_until_acked(self._producer, topic, key, value, partition)

    # --- offsets and rebalances -------------------------------------------

    async def _commit(self) -> None:
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        offsets = {tp: o.commit_point() for tp, o in self._offsets.items()
                   if tp in assigned and o.commit_point() >= 0}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            # Harmless: the records are re-read and the delivered-log skips them.
            log.warning("offset commit failed", extra={"reason": str(exc)[:300]})

    async def _drain(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.delivery_timeout * 3)

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        self._assigned = False
        await self._drain()
        await self._commit()
        for tp in revoked:
            self._offsets.pop(tp, None)
            self._resume_at.pop(tp, None)
            done = self._done.pop(tp.partition, None)
            if done is not None:
                done.remove()

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        partitions = sorted({tp.partition for tp in assigned})
        missing = [p for p in partitions if p not in self._done]
        self._done.update(await delivery_log.load_partitions(
            self.settings.bootstrap_list, missing, self._open_keys, security=client_kwargs(self.settings)))
        self._assigned = True
        log.info("partitions assigned", extra={"count": len(partitions)})

    def _open_keys(self, partition: int) -> DeliveredKeys:
        assert self._state is not None
        path = self._state / f"delivered-{partition}.db"
        shutil.rmtree(path, ignore_errors=True)
        return DeliveredKeys(path)

    async def _scan_queue_forever(self) -> None:
        labelled: set[tuple[str, str]] = set()
        while True:
            await asyncio.sleep(QUEUE_SCAN_SECONDS if self._assigned else 1.0)
            if not self._assigned or self._consumer is None:
                continue
            partitions = sorted({tp.partition for tp in self._consumer.assignment()})
            try:
                self.queue = await asyncio.to_thread(
                    scan_queue, self.settings.bootstrap_list, self.group_id, partitions,
                    lambda t: destination(self.tenants.get(t)), security=client_kwargs(self.settings),
                    seen=self._delivered_seen)
            except Exception as exc:  # a failed scan only leaves the gauges stale
                log.warning("queue scan failed", extra={"reason": str(exc)[:300]})
                continue
            now = self.clock()
            current = set()
            for row in self.queue.summary(now):
                current.add((row.tenant, row.destination))
                QUEUE_DEPTH.labels(row.tenant, row.destination).set(row.waiting)
                OLDEST_AGE.labels(row.tenant, row.destination).set(row.oldest_age)
            for gone in labelled - current:
                QUEUE_DEPTH.labels(*gone).set(0)
                OLDEST_AGE.labels(*gone).set(0)
            labelled |= current


async def run(settings: Settings) -> None:
    await serve(settings, DeliverySink(settings))
