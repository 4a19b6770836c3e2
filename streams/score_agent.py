"""Score agent: mail.inbound -> one Verdict per recipient, for the policy stage.

Mail that could not be virus-scanned (clamd unreachable) goes to mail.rescan
instead, where streams.rescan_agent scans it again before it is routed.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter

from postwarden.records import Envelope, RecordError, RuleHit, Verdict
from postwarden.topics import INBOUND, RESCAN
from streams import policy_agent
from streams.app import app, send, settings, topic
from streams.scan_retry import ScanRetry, scan_failed
from streams.scorer import Scorer
from streams.scoring_engine import ScoringEngine

log = logging.getLogger(__name__)

SCORED = Counter("postwarden_scored_messages_total", "Messages scored", ["verdict"])
DROPPED = Counter("postwarden_score_invalid_records_total",
                  "mail.inbound records without a usable envelope (left on the topic)")
DEFERRED = Counter("postwarden_rescan_deferred_total",
                   "Messages put on mail.rescan because ClamAV could not scan them")

inbound = topic(INBOUND)
rescans = topic(RESCAN)
scorer: Scorer = ScoringEngine.from_settings(settings)


def fan_out(envelope: Envelope, raw: bytes, result) -> list[Verdict]:
    rules = [{"name": h.name, "score": h.score, "description": h.description}
             for h in result.rules if isinstance(h, RuleHit)]
    return [
        Verdict(
            message_id=envelope.message_id, tenant=envelope.tenant, recipient=rcpt,
            mail_from=envelope.mail_from, received_at=envelope.received_at,
            size=envelope.size, spam_score=result.spam_score,
            category_scores=dict(result.category_scores), categories=list(result.categories),
            virus=result.virus, rules=rules, scorer=scorer.name, raw=raw,
        )
        for rcpt in envelope.rcpt_tos
    ]


# Concurrent actors on one stream: Faust commits an offset only once every event
# before it is done, so out-of-order completion keeps at-least-once.
@app.agent(inbound, concurrency=settings.score_concurrency)
async def score(stream):
    async for event in stream.events():
        try:
            envelope = Envelope.from_headers(event.headers)
        except RecordError as exc:
            # Not ours to guess: the record stays on mail.inbound for inspection.
            DROPPED.inc()
            log.error("skipping record without envelope", extra={
                "partition": event.message.partition, "offset": event.message.offset,
                "reason": str(exc)})
            continue
        raw = event.value
        result = await scorer.score(raw, envelope)
        SCORED.labels(result.verdict).inc()
        if scan_failed(result):
            retry = ScanRetry.of(envelope, raw, time.time())
            await send(rescans, envelope.message_id.encode(), retry.encode())
            DEFERRED.inc()
            continue
        await policy_agent.submit(fan_out(envelope, raw, result))
