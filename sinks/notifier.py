"""Notifier: mail.quarantine -> virus alerts now, quarantine digests on each tenant's schedule.

Both kinds of notice are written to mail.deliver and reach the user through
the delivery sink like any other mail.

Digest state (what is held for each user and not yet listed) lives in memory
for the partitions this process owns and in the compacted changelog
mail.digest.state, written (acks=all) before the source offset is committed
and to the same partition number as the recipient's held mail. On assignment
a process reads its changelog partitions back, so state survives restarts and
moves with the partitions between pods. Each state remembers the last source
offset it applied: records replayed after a crash change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from postwarden.config import Settings, Tenants
from postwarden.held_mail import decode_held
from postwarden.kafka_security import client_kwargs
from postwarden.keyring import Keyring
from postwarden.process_lifecycle import RebalanceRelay, serve, start_when_reachable
from postwarden.records import RecordError
from postwarden.sealing import RetiredKeyError, Sealer, TamperedError
from postwarden.topics import DELIVER, DIGEST_STATE, QUARANTINE
from sinks.digest import (
    DigestState,
    build_digest,
    digest_message_id,
    due_entries,
    entry,
    slot_of,
    with_pending,
)
from sinks.generated_mail import held_summary
from sinks.generated_mail import routed as generated
from sinks.kafka_output import send_until_acked
from sinks.virus_alert import alert_message_id, build_alert

log = logging.getLogger(__name__)

NOTICES = Counter("postwarden_notices_total", "Notifications written to mail.deliver",
                  ["tenant", "kind"])  # virus_alert | digest
PENDING_USERS = Gauge("postwarden_digest_pending_users", "Users with held mail not yet in a digest")


class Notifier:
    def __init__(self, settings: Settings, tenants: Tenants | None = None,
                 keyring: Keyring | None = None, clock: Callable[[], float] = time.time,
                 group_id: str | None = None) -> None:
        self.settings = settings
        self.tenants = tenants or settings.tenants()
        self.keyring = keyring or settings.keyring()
        self.sealer = Sealer(self.keyring)
        self.clock = clock
        self.group_id = group_id or f"{settings.app_id}-notifier"
        self.states: dict[int, dict[str, DigestState]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._assigned = False
        self._lock = asyncio.Lock()  # ticks and record handling both rewrite states

    @property
    def ready(self) -> bool:
        return self._assigned

    async def run(self, stop: asyncio.Event) -> None:
        bootstrap = self.settings.bootstrap_list
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, client_id="postwarden-notifier", acks="all",
            enable_idempotence=False, linger_ms=1,
            max_request_size=self.settings.max_record_bytes,
            **client_kwargs(self.settings))
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=self.group_id, client_id="postwarden-notifier",
            enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=6000,
            heartbeat_interval_ms=1000, fetch_max_wait_ms=self.settings.consumer_fetch_wait_ms,
            max_partition_fetch_bytes=self.settings.max_record_bytes,
            **client_kwargs(self.settings))
        await start_when_reachable(self._producer, stop)
        self._consumer.subscribe([QUARANTINE.name], listener=RebalanceRelay(self))
        await start_when_reachable(self._consumer, stop)
        try:
            next_tick = 0.0
            while not stop.is_set():
                batch = await self._consumer.getmany(timeout_ms=200, max_records=500)
                # The fetcher can hand out records before the rebalance listener has loaded
                # the partition's state: read those again once it has.
                for tp in [tp for tp in batch if tp.partition not in self.states]:
                    self._consumer.seek(tp, batch.pop(tp)[0].offset)
                if batch:
                    async with self._lock:
                        for tp, records in batch.items():
                            for record in records:
                                await self._apply(tp.partition, record.offset, record.value)
                    await self._commit(batch)
                if self._assigned and time.monotonic() >= next_tick:
                    await self.tick()
                    next_tick = time.monotonic() + self.settings.notify_tick_seconds
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._consumer.stop(), 15)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), 15)

    async def _apply(self, partition: int, offset: int, value: bytes) -> None:
        try:
            record = decode_held(self.sealer, value)
            held = held_summary(self.sealer, record)
        except (RecordError, TamperedError, RetiredKeyError) as exc:
            log.error("skipping unreadable held message", extra={
                "partition": partition, "offset": offset, "reason": type(exc).__name__})
            return
        tenant = self.tenants.get(held.tenant)
        if tenant is None:
            log.info("held for an unknown tenant, no notice", extra={"message_id": held.message_id})
            return
        now = self.clock()
        if held.virus:
            raw = build_alert(held, self.settings.notify_from, self.settings.smtp_hostname, now)
            alert = generated(held.tenant, held.recipient, raw, alert_message_id(held),
                              "virus_alert", now)
            await self._send(DELIVER.name, held.tenant.encode(), alert.encode(), None)
            NOTICES.labels(held.tenant, "virus_alert").inc()
            log.info("virus alert queued", extra={"message_id": held.message_id,
                                                  "tenant": held.tenant})
            return
        state = self.states[partition].get(held.recipient) or DigestState(held.recipient, held.tenant)
        if offset <= state.source_offset:
            return  # replayed after a crash; already applied
        state = with_pending(state, entry(held), offset)
        await self._save(partition, state)

    async def tick(self) -> None:
        """Send every digest that is due now (by the injected clock)."""
        async with self._lock:
            now = self.clock()
            for partition, states in list(self.states.items()):
                for state in list(states.values()):
                    if state.pending:
                        await self._digest(partition, state, now)
            PENDING_USERS.set(sum(1 for s in self.states.values() for st in s.values() if st.pending))

    async def _digest(self, partition: int, state: DigestState, now: float) -> None:
        tenant = self.tenants.get(state.tenant)
        if tenant is None:
            return
        interval = tenant.digest.interval_seconds
        entries = due_entries(state, interval, now)
        if not entries:
            return
        slot = slot_of(now, interval)
        raw = build_digest(tenant, state.recipient, entries, slot, self.settings.notify_from,
                           self.settings.smtp_hostname, self.settings.public_url, self.keyring, now,
                           state.unlisted)
        digest = generated(tenant.id, state.recipient, raw,
                           digest_message_id(tenant.id, state.recipient, slot), "digest", now)
        # Digest first, state second: a crash in between re-sends the same digest id,
        # which delivery drops as a duplicate.
        await self._send(DELIVER.name, tenant.id.encode(), digest.encode(), None)
        listed = {e["m"] for e in entries}
        await self._save(partition, DigestState(
            state.recipient, state.tenant, [e for e in state.pending if e["m"] not in listed],
            slot, state.source_offset))
        NOTICES.labels(tenant.id, "digest").inc()
        log.info("digest queued", extra={"tenant": tenant.id, "count": len(entries)})

    async def _save(self, partition: int, state: DigestState) -> None:
        await self._send(DIGEST_STATE.name, state.recipient.encode(), state.encode(), partition)
        if partition in self.states:  # not revoked meanwhile
            self.states[partition][state.recipient] = state

    async def _send(self, topic: str, key: bytes, value: bytes, partition: int | None) -> None:
        assert self._producer is not None
        await send_until_acked(self._producer, topic, key, value, partition)

    async def _commit(self, batch: dict) -> None:
        assert self._consumer is not None
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()
                   if tp in self._consumer.assignment()}
        try:
            if offsets:
                await self._consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("offset commit failed", extra={"reason": str(exc)[:300]})

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        partitions = sorted(tp.partition for tp in assigned)
        for p, states in (await load_states(self.settings.bootstrap_list, partitions,
                                                   client_kwargs(self.settings))).items():
            self.states[p] = states
        self._assigned = True
        log.info("partitions assigned", extra={"count": len(partitions)})

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        self._assigned = False
        for tp in revoked:
            self.states.pop(tp.partition, None)


async def load_states(bootstrap: list[str], partitions: list[int],
                      security: Mapping[str, Any] | None = None) -> dict[int, dict[str, DigestState]]:
    """Latest state per user in these changelog partitions (read until a quiet poll past the end)."""
    out: dict[int, dict[str, DigestState]] = {p: {} for p in partitions}
    if not partitions:
        return out
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                client_id="postwarden-digest-state", **(security or {}))
    await consumer.start()
    try:
        tps = [TopicPartition(DIGEST_STATE.name, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=300, max_records=5000)
            for tp, records in batch.items():
                for r in records:
                    with contextlib.suppress(RecordError):
                        state = DigestState.decode(r.value)
                        out[tp.partition][state.recipient] = state
            if not batch and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                return out
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), 10)


async def run(settings: Settings) -> None:
    await serve(settings, Notifier(settings))
