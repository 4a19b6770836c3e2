"""Rescan agent: mail.rescan -> verdicts for the policy stage once ClamAV can scan it.

See streams.scan_retry for the design. The agent holds the head of a partition
while clamd is down: everything behind it needs clamd too, so nothing is
gained by reading on, and the offset stays uncommitted until the verdicts of
the head are written.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge

from postwarden.records import Envelope
from streams import policy_agent
from streams.app import app, decoded, send, settings
from streams.scan_retry import Rescanner, ScanRetry
from streams.score_agent import fan_out, rescans, scorer

log = logging.getLogger(__name__)

RESCANNED = Counter("postwarden_rescanned_messages_total",
                    "Messages taken off mail.rescan, by outcome (verdict, expired, failing, requeued)",
                    ["outcome"])
WAITING_FOR_CLAMD = Gauge("postwarden_rescan_waiting_for_clamd",
                          "1 while the rescan agent waits for ClamAV to answer again")


async def _no_scanner() -> bool:
    return False


def _rescanner(should_yield) -> Rescanner:
    # With POSTWARDEN_CLAMD_ADDRESS unset since the mail was deferred, the operator has
    # turned scanning off: the first score says "unscanned", as for all mail then.
    scanner = getattr(scorer, "scanner", None)
    return Rescanner(scorer.score, scanner.ping if scanner else _no_scanner,
                     settings.rescan_max_age, settings.rescan_backoff_max,
                     on_wait=lambda waiting: WAITING_FOR_CLAMD.set(1 if waiting else 0),
                     should_yield=should_yield)


def _parsed(value: bytes) -> tuple[bytes, ScanRetry, Envelope]:
    retry = ScanRetry.decode(value)
    return value, retry, retry.decoded_envelope()


@app.agent(rescans)
async def rescan(stream):
    # A rebalance that started after the record was taken wants it back: its count moved
    # on, or it has suspended the flow of records. (app.rebalancing itself stays set for
    # a while after the new assignment has started streaming.) Stopping waits for the
    # current record too.
    taken_in = app.rebalancing_count
    rescanner = _rescanner(lambda: (app.rebalancing_count != taken_in
                                    or not app.flow_control.is_active() or app.should_stop))
    async for value, retry, envelope in decoded(stream, _parsed, "rescan record"):
        taken_in = app.rebalancing_count
        done = await rescanner.rescan(retry, envelope)
        RESCANNED.labels(done.outcome).inc()
        if done.result is None:
            await send(rescans, retry.message_id.encode(), value)
            log.info("rescan requeued for a rebalance", extra={
                "message_id": retry.message_id, "tenant": retry.tenant})
            continue
        await policy_agent.submit(fan_out(envelope, retry.raw, done.result))
        log.info("rescanned", extra={"message_id": retry.message_id, "tenant": retry.tenant,
                                     "status": done.outcome,
                                     "elapsed_ms": round(done.waited * 1000)})
