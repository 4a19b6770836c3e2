"""Policy agent: each recipient's Verdict -> mail.deliver or mail.quarantine, plus an anonymous event.

mail.verdicts is keyed by recipient and co-partitioned with the users table
(streams.mailbox), so the user's settings are read locally, no remote call.
Held mail is sealed here, before it is written to mail.quarantine: no topic
after the policy stage holds a quarantined message in clear.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from prometheus_client import Counter

from postwarden.held_mail import seal_held
from postwarden.records import RoutedMessage, Verdict
from postwarden.sealing import Sealer
from postwarden.topics import DELIVER, EVENTS, QUARANTINE, VERDICTS
from postwarden.users import effective
from streams.app import app, decoded, settings, topic
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


@app.agent(verdicts)
async def policy(stream):
    async for verdict in decoded(stream, Verdict.decode, "verdict"):
        if verdict.recipient != verdict.recipient.lower():
            # Per-user state is keyed by the lowercased address: move the verdict to that
            # key's partition first, where the user's settings and quarantine live.
            verdict = dataclasses.replace(verdict, recipient=verdict.recipient.lower())
            await verdicts.send(key=verdict.recipient.encode(), value=verdict.encode())
            continue
        action, reason = route(verdict)
        routed = RoutedMessage(
            message_id=verdict.message_id, tenant=verdict.tenant, recipient=verdict.recipient,
            mail_from=verdict.mail_from, action=action, reason=reason,
            spam_score=verdict.spam_score, virus=verdict.virus, categories=verdict.categories,
            rules=verdict.rules, received_at=verdict.received_at, raw=verdict.raw,
        )
        if action == "deliver":
            await deliver.send(key=verdict.tenant.encode(), value=routed.encode())
        else:
            held = seal_held(sealer, routed)
            await quarantine.send(key=verdict.recipient.encode(), value=held.encode())
        await events.send(key=verdict.tenant.encode(),
                          value=anonymous_event(verdict, action, time.time()).encode())
        ROUTED.labels(action).inc()
        log.info("routed", extra={"message_id": verdict.message_id, "tenant": verdict.tenant,
                                  "status": action, "reason": reason})
