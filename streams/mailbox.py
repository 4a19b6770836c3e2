"""Per-user state in the workers: the users table, the quarantine store, and their agents.

Everything here is keyed by recipient address and co-partitioned with
mail.verdicts, so the worker that routes a user's mail also holds their
settings and quarantine. Changes arrive as commands on topics and are applied
in order by the partition's owner; a web request waiting for its change is
told the outcome through ``outcome()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import partial

import faust
from faust.types import TP
from prometheus_client import Counter

from postwarden.held_mail import decode_held
from postwarden.records import RoutedMessage, StatsEvent, _Record, verdict_label
from postwarden.sealing import RetiredKeyError, Sealer, TamperedError
from postwarden.topics import (
    DELIVER, EVENTS, QUARANTINE, QUARANTINE_ACTIONS, QUARANTINE_INDEX_CHANGELOG,
    QUARANTINE_STORE_CHANGELOG, USER_SETTINGS, USERS_CHANGELOG, TopicSpec,
)
from postwarden.users import SettingsError, UserCommand, UserRecord, apply_command
from streams import table_store
from streams.app import app, decoded, send, settings, topic
from streams.quarantine_store import NotFound, QuarantineStore, is_directory_key

log = logging.getLogger(__name__)

RELEASED = Counter("postwarden_quarantine_released_total", "Quarantined messages released")
ACTIONS = Counter("postwarden_mailbox_commands_total", "User and quarantine commands applied",
                  ["op", "status"])

QUARANTINE_OPS = ("release", "delete", "expire")
RETENTION_SWEEP_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class QuarantineCommand(_Record):
    """An action on one quarantined message (mail.quarantine-actions, key: recipient)."""

    command_id: str
    tenant: str
    recipient: str
    message_id: str
    op: str  # one of QUARANTINE_OPS
    issued_at: float = field(default_factory=time.time)


def new_quarantine_command(tenant: str, recipient: str, message_id: str, op: str) -> QuarantineCommand:
    if op not in QUARANTINE_OPS:
        raise ValueError(f"unknown quarantine operation {op!r}")
    return QuarantineCommand(uuid.uuid4().hex, tenant, recipient, message_id, op)


def _changelog(spec: TopicSpec) -> faust.TopicT:
    # acks=False as on Faust's own changelogs: no agent reads them, and with acks on
    # Faust's liveness check took the table's writes for a stalled stream and logged
    # an error every few seconds from five minutes after start.
    return app.topic(spec.name, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw",
                     partitions=settings.topic_partitions, compacting=True, internal=False, acks=False)


def _table(name: str, spec: TopicSpec) -> faust.Table:
    # bytes key and value types make Faust use its raw codec: records encode themselves.
    return app.Table(name, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions,
                     changelog_topic=_changelog(spec), store=table_store.url(name),
                     options=table_store.table_options())


table_store.register()


users = _table("users", USERS_CHANGELOG)
quarantine_index = _table("quarantine_index", QUARANTINE_INDEX_CHANGELOG)
quarantine_messages = _table("quarantine_messages", QUARANTINE_STORE_CHANGELOG)

user_settings_topic = topic(USER_SETTINGS)
quarantine_actions_topic = topic(QUARANTINE_ACTIONS)
quarantine_topic = topic(QUARANTINE)
deliver_topic = topic(DELIVER)
events_topic = topic(EVENTS)

tenants = settings.tenants()
sealer = Sealer(settings.keyring())
store = QuarantineStore(quarantine_index, quarantine_messages, sealer)

# command id -> future of its outcome, for web requests served by this worker.
_waiting: dict[str, asyncio.Future] = {}


def user_record(address: str) -> UserRecord | None:
    value = users.get(address.encode())
    return UserRecord.decode(value) if value else None


async def submit(cmd: UserCommand | QuarantineCommand, timeout: float = 10.0) -> dict:
    """Sends a command and waits until this worker applied it; {"status": "pending"} on timeout."""
    future = _waiting[cmd.command_id] = asyncio.get_running_loop().create_future()
    try:
        if isinstance(cmd, UserCommand):
            await send(user_settings_topic, cmd.address.encode(), cmd.encode())
        else:
            await send(quarantine_actions_topic, cmd.recipient.encode(), cmd.encode())
        return await asyncio.wait_for(future, timeout)
    except asyncio.TimeoutError:
        return {"status": "pending"}
    finally:
        _waiting.pop(cmd.command_id, None)


def _done(command_id: str, outcome: dict) -> None:
    future = _waiting.get(command_id)
    if future is not None and not future.done():
        future.set_result(outcome)


def apply_user_command(cmd: UserCommand, now: float) -> dict:
    key = cmd.address.encode()
    current = user_record(cmd.address)
    if current is not None and current.tenant != cmd.tenant:
        return {"status": "refused", "detail": "address belongs to another tenant"}
    try:
        updated = apply_command(current, cmd, now)
    except SettingsError as exc:
        return {"status": "invalid", "detail": str(exc)}
    if updated is None:
        if key in users:
            del users[key]
        purged = store.purge(cmd.address)
        return {"status": "removed", "purged": purged}
    users[key] = updated.encode()
    return {"status": "ok"}


async def apply_quarantine_command(cmd: QuarantineCommand, now: float) -> dict:
    store.settle(cmd.recipient)
    if cmd.op == "expire":
        return {"status": "expired" if store.expire(cmd.recipient, cmd.message_id, now) else "kept"}
    try:
        entry = store.find(cmd.recipient, cmd.message_id)
    except (TamperedError, RetiredKeyError):
        return {"status": "tampered"}
    if entry is None:
        return {"status": "not_found"}
    if entry.status != "held":
        return {"status": f"already_{entry.status}"}
    if cmd.op == "delete":
        store.close(cmd.recipient, cmd.message_id, "deleted")
        return {"status": "deleted"}
    if entry.virus:
        # Virus-infected mail is never released, whatever the user asks.
        return {"status": "refused", "detail": "messages with a virus cannot be released"}
    try:
        entry, raw = store.message(cmd.recipient, cmd.message_id)
    except (TamperedError, RetiredKeyError):
        return {"status": "tampered"}
    except NotFound:
        return {"status": "not_found"}
    released = RoutedMessage(
        message_id=cmd.message_id, tenant=cmd.tenant, recipient=cmd.recipient,
        mail_from=entry.sender, action="deliver", reason="released", spam_score=entry.score,
        virus=None, categories=list(entry.categories), rules=list(entry.rules),
        received_at=entry.received_at, raw=raw)
    await send(deliver_topic, cmd.tenant.encode(), released.encode())
    await send(events_topic, cmd.tenant.encode(), StatsEvent(
        tenant=cmd.tenant, event_time=now, verdict=verdict_label(None, list(entry.categories)),
        category=entry.categories[0] if entry.categories else "none", action="release",
        size_bytes=entry.size, spam_score=entry.score,
        latency_ms=max(0.0, (now - entry.received_at) * 1000.0)).encode())
    store.close(cmd.recipient, cmd.message_id, "released")
    RELEASED.inc()
    return {"status": "released"}


@app.agent(user_settings_topic)
async def user_changes(stream):
    async for cmd in decoded(stream, UserCommand.decode, "user command"):
        outcome = apply_user_command(cmd, time.time())
        ACTIONS.labels(cmd.op, outcome["status"]).inc()
        log.info("user command applied", extra={"tenant": cmd.tenant, "status": outcome["status"],
                                                "reason": cmd.op})
        _done(cmd.command_id, outcome)


@app.agent(quarantine_actions_topic)
async def quarantine_actions(stream):
    async for cmd in decoded(stream, QuarantineCommand.decode, "quarantine command"):
        outcome = await apply_quarantine_command(cmd, time.time())
        ACTIONS.labels(cmd.op, outcome["status"]).inc()
        log.info("quarantine command applied", extra={
            "message_id": cmd.message_id, "tenant": cmd.tenant, "status": outcome["status"],
            "reason": cmd.op})
        _done(cmd.command_id, outcome)


@app.agent(quarantine_topic)
async def quarantine_store(stream):
    """Files every quarantined message, sealed by the policy agent, in the store (idempotent on replay)."""
    async for held in decoded(stream, partial(decode_held, sealer), "quarantined message"):
        tenant = tenants.get(held.tenant)
        retention = tenant.quarantine_retention_days if tenant else 14
        if store.add(held, retention, time.time()):
            log.info("quarantined message stored",
                     extra={"message_id": held.message_id, "tenant": held.tenant})


def _active_recipients() -> list[str]:
    """Users with held mail in the partitions this worker owns (standby copies are left to their owner)."""
    changelog = quarantine_index.changelog_topic.get_topic_name()
    out = []
    for key in list(quarantine_index.keys()):
        # A user's keys all sit in the partition of their address, which is the directory key.
        if is_directory_key(key) and app.assignor.is_active(
                TP(changelog, app.producer.key_partition(changelog, key).partition)):
            out.append(key.decode())
    return out


@app.timer(RETENTION_SWEEP_SECONDS)
async def retention_sweep() -> None:
    """Asks the partition owner (itself) to drop entries whose retention has ended."""
    if app.rebalancing:
        return
    for tenant, recipient, message_id in store.due(time.time(), _active_recipients()):
        cmd = new_quarantine_command(tenant, recipient, message_id, "expire")
        await send(quarantine_actions_topic, recipient.encode(), cmd.encode())
