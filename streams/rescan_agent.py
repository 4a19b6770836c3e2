"""Rescan agent: mail.rescan -> verdicts on mail.verdicts once ClamAV can scan it.

See streams.scan_retry for the design. The agent holds the head of a partition
while clamd is down: everything behind it needs clamd too, so nothing is
gained by reading on, and the offset stays uncommitted until the verdicts of
the head are written.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge

from postwarden.records import RecordError
from streams.app import app, settings
from streams.scan_retry import Rescanner, ScanRetry
from streams.score_agent import fan_out, rescans, scorer, verdicts

log = logging.getLogger(__name__)

RESCANNED = Counter("postwarden_rescanned_messages_total",
                    "Messages taken off mail.rescan, by outcome (verdict, expired, failing)",
                    ["outcome"])
WAITING_FOR_CLAMD = Gauge("postwarden_rescan_waiting_for_clamd",
                          "1 while the rescan agent waits for ClamAV to answer again")


def _rescanner() -> Rescanner:
    scanner = getattr(scorer, "scanner", None)
    if scanner is None:
        raise RuntimeError("mail.rescan holds mail but POSTWARDEN_CLAMD_ADDRESS is not set")
    return Rescanner(scorer.score, scanner.ping, settings.rescan_max_age,
                     settings.rescan_backoff_max,
                     on_wait=lambda waiting: WAITING_FOR_CLAMD.set(1 if waiting else 0))


@app.agent(rescans)
async def rescan(stream):
    rescanner = None
    async for value in stream:
        try:
            retry = ScanRetry.decode(value)
            envelope = retry.decoded_envelope()
        except RecordError as exc:
            log.error("skipping undecodable rescan record", extra={"reason": str(exc)})
            continue
        rescanner = rescanner or _rescanner()
        done = await rescanner.rescan(retry)
        for verdict in fan_out(envelope, retry.raw, done.result):
            await verdicts.send(key=verdict.recipient.encode(), value=verdict.encode())
        RESCANNED.labels(done.outcome).inc()
        log.info("rescanned", extra={"message_id": retry.message_id, "tenant": retry.tenant,
                                     "status": done.outcome,
                                     "elapsed_ms": round(done.waited * 1000)})
