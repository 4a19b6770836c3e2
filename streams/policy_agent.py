"""Policy agent: each recipient's Verdict -> mail.deliver or mail.quarantine, plus an anonymous event.

mail.verdicts is keyed by recipient and co-partitioned with the users table
(streams.mailbox), so the user's settings are read locally, no remote call.
A verdict whose recipient's partition is already active on the worker that
scored it skips that topic (``submit``): the hop only moves it to where the
user's state is, and it cost a fifth of the worker's CPU per message.
Held mail is sealed here, before it is written to mail.quarantine: no topic
after the policy stage holds a quarantined message in clear.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable

from faust.types import TP
from prometheus_client import Counter

from postwarden.held_mail import seal_held
from postwarden.records import RoutedMessage, Verdict
from postwarden.sealing import Sealer
from postwarden.topics import DELIVER, EVENTS, QUARANTINE, USERS_CHANGELOG, VERDICTS
from postwarden.users import effective
from streams.app import app, decoded, send, settings, topic
from streams.mailbox import user_record
from streams.policy import decide
from streams.stats_events import anonymous_event

log = logging.getLogger(__name__)

ROUTED = Counter("postwarden_routed_total", "Recipients routed", ["action"])

verdicts = topic(VERDICTS)
deliver = topic(DELIVER)
quarantine = topic(QUARANTINE)
events = topic(EVENTS)
tenants = settings.tenants()
sealer = Sealer(settings.keyring())


def route(verdict: Verdict) -> tuple[str, str]:
    """(action, reason) from the recipient's own settings over their tenant's defaults."""
    tenant = tenants.get(verdict.tenant)
    settings_ = effective(user_record(verdict.recipient), tenant) if tenant else None
    return decide(verdict, tenant, settings_)


# (rebalance count, partitions of mail.verdicts whose users table partition is active here)
_owned: tuple[int, frozenset[int]] = (-1, frozenset())


def _active_here(key: bytes) -> bool:
    """Whether mail.verdicts' partition of ``key``, and so the users table's, is active on
    this worker now (a worker in a rebalance or still recovering tables owns nothing)."""
    global _owned
    if app.rebalancing or app.in_recovery:
        return False
    partition = app.consumer.key_partition(VERDICTS.name, key)
    if partition is None:
        return False
    if _owned[0] != app.rebalancing_count:
        actives = app.assignor.assigned_actives()
        _owned = (app.rebalancing_count, frozenset(
            tp.partition for tp in actives
            if tp.topic == VERDICTS.name and TP(USERS_CHANGELOG.name, tp.partition) in actives))
    return partition in _owned[1]


async def submit(verdicts_: Iterable[Verdict]) -> None:
    """Routes each verdict here when its recipient's state is on this worker, else sends
    it to mail.verdicts for the worker that has it.

    Both ways the outputs are sent before the caller's input offset is committed, so a
    crash replays the message either way (delivery and the quarantine store dedupe).
    """
    for verdict in verdicts_:
        verdict = _lowercased(verdict)
        key = verdict.recipient.encode()
        if _active_here(key):
            await apply(verdict)
        else:
            await send(verdicts, key, verdict.encode())


def _lowercased(verdict: Verdict) -> Verdict:
    # Per-user state is keyed by the lowercased address.
    lower = verdict.recipient.lower()
    return verdict if lower == verdict.recipient else dataclasses.replace(verdict, recipient=lower)


async def apply(verdict: Verdict) -> None:
    """Routes one recipient's verdict by their settings; their partition must be active here."""
    action, reason = route(verdict)
    routed = RoutedMessage(
        message_id=verdict.message_id, tenant=verdict.tenant, recipient=verdict.recipient,
        mail_from=verdict.mail_from, action=action, reason=reason,
        spam_score=verdict.spam_score, virus=verdict.virus, categories=verdict.categories,
        rules=verdict.rules, received_at=verdict.received_at, raw=verdict.raw,
    )
    if action == "deliver":
        await send(deliver, verdict.tenant.encode(), routed.encode())
    else:
        held = seal_held(sealer, routed)
        await send(quarantine, verdict.recipient.encode(), held.encode())
    await send(events, verdict.tenant.encode(),
               anonymous_event(verdict, action, time.time()).encode())
    ROUTED.labels(action).inc()
    log.info("routed", extra={"message_id": verdict.message_id, "tenant": verdict.tenant,
                              "status": action, "reason": reason})


@app.agent(verdicts)
async def policy(stream):
    async for verdict in decoded(stream, Verdict.decode, "verdict"):
        if verdict.recipient != verdict.recipient.lower():
            # Written by a version that did not lowercase: move the verdict to its
            # lowercased key's partition first, where the user's state lives.
            await submit([verdict])
            continue
        await apply(verdict)
