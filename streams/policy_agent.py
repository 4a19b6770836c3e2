"""Policy agent: each recipient's Verdict -> mail.deliver or mail.quarantine, plus an anonymous event."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter

from postwarden.config import Tenant
from postwarden.records import RecordError, RoutedMessage, Verdict
from postwarden.topics import DELIVER, EVENTS, QUARANTINE, VERDICTS
from streams.app import app, settings, topic
from streams.stats_events import anonymous_event

log = logging.getLogger(__name__)

ROUTED = Counter("postwarden_routed_total", "Recipients routed", ["action"])

verdicts = topic(VERDICTS)
deliver = topic(DELIVER)
quarantine = topic(QUARANTINE)
events = topic(EVENTS)
tenants = settings.tenants()


def decide(verdict: Verdict, tenant: Tenant | None) -> tuple[str, str]:
    """(action, reason). Unknown tenants and unparseable mail are held, never passed."""
    if verdict.virus:
        return "quarantine", "virus"
    if tenant is None:
        return "quarantine", "unknown_tenant"
    if "unparseable" in verdict.categories:
        return "quarantine", "unparseable"
    if verdict.spam_score >= tenant.spam_threshold:
        return "quarantine", "spam"
    return "deliver", "clean"


@app.agent(verdicts)
async def policy(stream):
    async for value in stream:
        try:
            verdict = Verdict.decode(value)
        except RecordError as exc:
            log.error("skipping undecodable verdict", extra={"reason": str(exc)})
            continue
        action, reason = decide(verdict, tenants.get(verdict.tenant))
        routed = RoutedMessage(
            message_id=verdict.message_id, tenant=verdict.tenant, recipient=verdict.recipient,
            mail_from=verdict.mail_from, action=action, reason=reason,
            spam_score=verdict.spam_score, virus=verdict.virus, categories=verdict.categories,
            rules=verdict.rules, received_at=verdict.received_at, raw=verdict.raw,
        )
        if action == "deliver":
            await deliver.send(key=verdict.tenant.encode(), value=routed.encode())
        else:
            await quarantine.send(key=verdict.recipient.encode(), value=routed.encode())
        await events.send(key=verdict.tenant.encode(),
                          value=anonymous_event(verdict, action, time.time()).encode())
        ROUTED.labels(action).inc()
        log.info("routed", extra={"message_id": verdict.message_id, "tenant": verdict.tenant,
                                  "status": action, "reason": reason})
