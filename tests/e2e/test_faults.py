"""Faults injected into a running pipeline, each ending with the audit of tests/e2e/audit.py:
every recipient of every message that got a 250 is delivered or quarantined exactly
once, and no downstream server ever receives a (message id, recipient) twice.

One pipeline serves the module (tests/e2e/fault_pipeline.py); each test uses its own
tenant and restores what it broke, so the tests do not depend on their order.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from postwarden.held_mail import HeldMessage
from postwarden.records import RoutedMessage
from postwarden.topics import DELIVER, QUARANTINE
from streams.scan_retry import scan_rescan_queue
from tests.delivery_helpers import logged, wait
from tests.e2e.audit import Ledger, Sender, write_report
from tests.e2e.fault_pipeline import APP_ID, FaultPipeline
from tests.kafka_reader import read_topic

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    p = FaultPipeline(tmp_path_factory.mktemp("faults"))
    try:
        yield p.start()
    finally:
        p.stop()


@pytest.fixture
def healthy(pipeline: FaultPipeline):
    """Every component up before a test, and still up after it (a fault test restores its fault)."""
    pipeline.assert_running()
    for name in pipeline.processes:
        pipeline.wait_ready(name)
    yield pipeline
    pipeline.assert_running()


def plan(tenant: str, count: int) -> list[tuple[str, list[str], str]]:
    """(kind, recipients, expected action): two thirds ham, a third spam, some to two users."""
    out = []
    for i in range(count):
        kind = "spam" if i % 3 == 2 else "ham"
        rcpts = [f"u{i % 4}@{tenant}.test"] + ([f"u{(i + 1) % 4}@{tenant}.test"] if i % 5 == 0 else [])
        out.append((kind, rcpts, "quarantine" if kind == "spam" else "deliver"))
    return out


def send_all(pipeline: FaultPipeline, ledger: Ledger, tenant: str, items, pause: float = 0.0) -> None:
    sender = Sender(pipeline.smtp_port, ledger)
    try:
        for kind, rcpts, expect in items:
            sender.send(tenant, kind, rcpts, expect)
            if pause:
                time.sleep(pause)
    finally:
        sender.close()


def routed_count(pipeline: FaultPipeline) -> int:
    return len(logged(pipeline.processes["worker"], "routed"))


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def pending_rows(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("postwarden_stats_pending_rows "):
                return float(line.split()[1])
    raise AssertionError("postwarden_stats_pending_rows missing from /metrics")


def test_broker_restart_mid_burst_loses_nothing(healthy):
    p, started, ledger = healthy, time.monotonic(), Ledger()
    burst = threading.Thread(target=send_all, args=(p, ledger, "brk", plan("brk", 45), 0.05))
    burst.start()
    assert wait(lambda: len(ledger.accepted) >= 12, 30)
    before = len(ledger.accepted)
    # A crash, not a clean stop: the broker keeps only what it stored before acking.
    p.broker.proc.send_signal(signal.SIGKILL)
    p.broker.proc.wait(10)
    p.broker.proc = None
    time.sleep(4)  # longer than the ingest's produce timeout (3 s): some senders get a 451
    p.broker.start()
    restarted = len(ledger.accepted)
    burst.join(120)
    assert not burst.is_alive()
    assert before < restarted or restarted < len(ledger.accepted), "the restart was not mid-burst"
    report = p.audit(ledger, "brk", timeout=90)
    assert report.delivered and report.quarantined
    assert report.refusals > 0, "no sender saw the outage"
    write_report("broker restart", report, time.monotonic() - started)


def test_worker_sigkill_mid_batch_delivers_each_recipient_once(healthy):
    p, started, ledger = healthy, time.monotonic(), Ledger()
    routed_before = routed_count(p)
    batch = threading.Thread(target=send_all, args=(p, ledger, "wrk", plan("wrk", 45), 0.02))
    batch.start()
    assert wait(lambda: routed_count(p) - routed_before >= 10, 60), p.log("worker")[-2000:]
    p.kill("worker")
    routed_at_kill = routed_count(p) - routed_before
    p.start_process("worker")
    batch.join(120)
    p.wait_ready("worker")
    report = p.audit(ledger, "wrk", timeout=90)
    assert routed_at_kill < report.accepted  # killed mid-batch
    assert report.topic_duplicates > 0, "the restart replayed nothing: the fault was not exercised"
    write_report("worker SIGKILL", report, time.monotonic() - started)


def test_delivery_sink_sigkill_between_send_and_commit(healthy):
    """The full-path form of test_delivery_flow's test of the same name: from the SMTP 250
    through scoring and routing to the downstream server, the sink killed after sending
    and before committing any offset, and restarted."""
    p, started, ledger = healthy, time.monotonic(), Ledger()
    p.restart("delivery", POSTWARDEN_DELIVERY_COMMIT_SECONDS="60")
    send_all(p, ledger, "dlv", plan("dlv", 30))
    ids = {a.message_id for a in ledger.accepted.values() if a.expect == "deliver"}
    sink = p.processes["delivery"]
    assert wait(lambda: ids <= {e["message_id"] for e in logged(sink, "delivered")}, 60), sink.log()[-2000:]
    skipped_before = len(logged(sink, "already delivered, skipped"))
    p.kill("delivery")
    again = p.start_process("delivery")
    p.wait_ready("delivery")
    report = p.audit(ledger, "dlv", timeout=60)
    # The restart did re-read every delivered record and skipped it: nothing was committed.
    skipped = {e["message_id"] for e in logged(again, "already delivered, skipped")[skipped_before:]}
    assert ids <= skipped
    write_report("delivery sink SIGKILL", report, time.monotonic() - started)


def test_clickhouse_outage_counts_exact_afterwards(healthy):
    """20 s down instead of the issue's minute: the sink's behaviour does not depend on the
    length (closed windows stay in memory, every flush retries, readiness is off), only the
    memory held grows with it."""
    p, started, ledger = healthy, time.monotonic(), Ledger()
    items = plan("chs", 40)
    send_all(p, ledger, "chs", items[:10])
    assert wait(lambda: p.stats_total("chs") == len(ledger.accepted), 30)
    stats = p.processes["stats"]
    failures_before = len(logged(stats, "ClickHouse write failed, will retry"))

    p.clickhouse.stop()
    down_at = time.monotonic()
    send_all(p, ledger, "chs", items[10:], pause=0.15)  # ~5 s of mail: windows close meanwhile
    assert wait(lambda: len(logged(stats, "ClickHouse write failed, will retry")) > failures_before, 20)
    assert readyz(p.health["stats"]) == 503  # the sink says it cannot write
    assert wait(lambda: pending_rows(p.health["stats"]) > 0, 10)  # and holds the closed windows
    time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))
    p.clickhouse.start()

    want = len(ledger.accepted)
    assert wait(lambda: p.stats_total("chs") == want, 30), stats.log()[-3000:]
    time.sleep(2)  # a late double count would show here
    assert p.stats_total("chs") == want
    assert wait(lambda: readyz(p.health["stats"]) == 200, 10)
    report = p.audit(ledger, "chs", timeout=60)
    write_report("ClickHouse down 20 s", report, time.monotonic() - started)


def test_clamav_outage_defers_mail_until_it_is_scanned(healthy):
    p, started, ledger = healthy, time.monotonic(), Ledger()
    p.clamd.stop()
    try:
        send_all(p, ledger, "clam", plan("clam", 15))
        messages = {message_id for message_id, _ in ledger.accepted}
        # Mail that cannot be scanned waits on mail.rescan: never passed unscanned, and
        # not in anyone's quarantine either.
        assert wait(lambda: scan_rescan_queue([p.broker.bootstrap], APP_ID).waiting == len(messages), 30)
        time.sleep(2)
        assert not p.received("clam")
        routed = [RoutedMessage.decode(r.value).message_id
                  for r in read_topic(p.broker.bootstrap, DELIVER.name, lambda r: False, timeout=1)]
        held = [HeldMessage.decode(r.value).message_id
                for r in read_topic(p.broker.bootstrap, QUARANTINE.name, lambda r: False, timeout=1)]
        assert not messages.intersection(routed + held)
    finally:
        p.clamd.start()
    # Once clamd answers, each message is routed once by its real result.
    report = p.audit(ledger, "clam", timeout=90)
    assert report.delivered == sum(1 for a in ledger.accepted.values() if a.expect == "deliver")
    assert report.quarantined == sum(1 for a in ledger.accepted.values() if a.expect == "quarantine")
    for entry in report.quarantine_entries.values():
        assert entry["virus"] != "SCAN-UNAVAILABLE" and "scan_failed" not in entry["categories"]
    write_report("ClamAV down", report, time.monotonic() - started)


def test_downstream_deferring_then_accepting_gets_everything_once(healthy):
    p, started, ledger = healthy, time.monotonic(), Ledger()
    server = p.downstream["dfr"]
    sink = p.processes["delivery"]
    server.behaviour.rcpt_reply = "451 4.3.0 try later"
    try:
        send_all(p, ledger, "dfr", plan("dfr", 30))
        ids = {a.message_id for a in ledger.accepted.values() if a.expect == "deliver"}

        def deferred_twice() -> bool:
            counts: dict[str, int] = {}
            for e in logged(sink, "deferred"):
                counts[e["message_id"]] = counts.get(e["message_id"], 0) + 1
            return all(counts.get(i, 0) >= 2 for i in ids)

        assert wait(deferred_twice, 60), sink.log()[-2000:]
    finally:
        server.behaviour.rcpt_reply = None
    assert not server.recorder.received
    report = p.audit(ledger, "dfr", timeout=60)
    assert report.delivered == sum(1 for a in ledger.accepted.values() if a.expect == "deliver")
    write_report("downstream deferring", report, time.monotonic() - started)
