"""The walking skeleton end to end: SMTP -> broker -> Faust agents -> topics -> ClickHouse (both)."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import time
import urllib.request

import pytest

from postwarden.held_mail import HeldMessage
from postwarden.local_services import free_port
from postwarden.records import RoutedMessage
from sinks.stats_store import EmbeddedStatsStore, ServerStatsStore
from tests.conftest import REPO, service_env, wait_http_ok
from tests.kafka_reader import read_topic

pytestmark = pytest.mark.slow

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def test_topics_create_command_is_idempotent(broker):
    env = service_env(REPO, broker.bootstrap)
    cmd = [sys.executable, "-m", "postwarden.cli", "topics", "create"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "mail.inbound: exists" in out.stdout  # the fixture created them already
    env["POSTWARDEN_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"
    out = subprocess.run([*cmd, "--timeout", "2"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "cannot create topics" in out.stderr


def test_mail_is_routed_once_per_recipient_and_counted_in_both_clickhouse_backends(
        broker, clickhouse_server, clamd, spawn, tmp_path):
    ServerStatsStore(clickhouse_server.url).query("DROP DATABASE IF EXISTS postwarden")
    smtp_port, ingest_health, chdb_health, server_health, worker_health = (free_port() for _ in range(5))
    # k = 1: this test checks exact counts per verdict, not suppression (test_privacy does).
    base = service_env(tmp_path, broker.bootstrap, POSTWARDEN_STATS_WINDOW_SECONDS="2",
                       POSTWARDEN_STATS_GRACE_SECONDS="0.5", POSTWARDEN_STATS_K_ANONYMITY="1")
    worker = spawn(["worker"], {**base, "POSTWARDEN_HEALTH_PORT": str(worker_health),
                                "POSTWARDEN_CLAMD_ADDRESS": clamd.address}, "worker")
    ingest = spawn(["ingest"], {**base, "POSTWARDEN_SMTP_PORT": str(smtp_port),
                                "POSTWARDEN_HEALTH_PORT": str(ingest_health)}, "ingest")
    sink_chdb = spawn(["sink", "stats"], {**base, "POSTWARDEN_HEALTH_PORT": str(chdb_health)}, "sink-chdb")
    sink_server = spawn(["sink", "stats"], {
        **base, "POSTWARDEN_HEALTH_PORT": str(server_health), "POSTWARDEN_APP_ID": "pw-server-sink",
        "POSTWARDEN_CLICKHOUSE_URL": clickhouse_server.url}, "sink-server")
    wait_http_ok(f"http://127.0.0.1:{ingest_health}/readyz", 30, ingest)
    wait_http_ok(f"http://127.0.0.1:{worker_health}/readyz", 60, worker)
    wait_http_ok(f"http://127.0.0.1:{chdb_health}/readyz", 60, sink_chdb)
    wait_http_ok(f"http://127.0.0.1:{server_health}/readyz", 60, sink_server)

    expected: dict[tuple[str, str], str] = {}
    ham = (REPO / "examples/hello.eml").read_bytes().replace(b"\n", b"\r\n")
    spam = (REPO / "examples/spam.eml").read_bytes().replace(b"\n", b"\r\n")
    virus = ham.replace(b"Bob\r\n", b"Bob\r\n\r\n" + EICAR + b"\r\n")
    plan = ([("clean", ham, ["ann@example.com", "bo@example.net"])] * 6
            + [("spam", spam, ["ann@example.com"])] * 3
            + [("virus", virus, ["ann@example.com", "cy@example.com"])])
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        for kind, raw, rcpts in plan:
            smtp.mail("sender@x.example")
            for r in rcpts:
                assert smtp.rcpt(r)[0] == 250
            code, reply = smtp.data(raw)
            assert code == 250, reply
            message_id = reply.decode().rsplit(" ", 1)[1]
            for r in rcpts:
                expected[(message_id, r)] = "deliver" if kind == "clean" else "quarantine"

    def routed(topic: str) -> list[RoutedMessage | HeldMessage]:
        records = read_topic(broker.bootstrap, topic, lambda r: False, timeout=2)
        return [(HeldMessage if topic == "mail.quarantine" else RoutedMessage).decode(r.value)
                for r in records]

    deadline = time.monotonic() + 90
    seen: dict[tuple[str, str], set[str]] = {}
    while time.monotonic() < deadline and set(seen) != set(expected):
        seen = {}
        for topic in ("mail.deliver", "mail.quarantine"):
            for m in routed(topic):
                seen.setdefault(m.dedupe_key, set()).add(topic.removeprefix("mail."))
    assert set(seen) == set(expected), worker.log()[-3000:]
    # Each (message, recipient) went one way only, and the right way.
    assert {k: next(iter(v)) for k, v in seen.items()} == expected
    assert all(len(v) == 1 for v in seen.values())
    viruses = [m for m in routed("mail.quarantine") if m.reason == "virus"]
    assert {m.recipient for m in viruses} == {"ann@example.com", "cy@example.com"}

    want = {("example", "clean", "deliver"): 12, ("example", "spam", "quarantine"): 3,
            ("example", "virus", "quarantine"): 2}
    server_store = ServerStatsStore(clickhouse_server.url)
    query = ("SELECT tenant, verdict, action, sum(messages) FROM postwarden.mail_stats "
             "GROUP BY tenant, verdict, action")

    def server_totals():
        return {(t, v, a): int(n) for t, v, a, n in server_store.query(query)}

    def chdb_totals():
        with urllib.request.urlopen(f"http://127.0.0.1:{chdb_health}/stats", timeout=5) as r:
            return {(x["tenant"], x["verdict"], x["action"]): x["messages"] for x in json.load(r)}

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (server_totals() != want or chdb_totals() != want):
        time.sleep(0.5)
    assert server_totals() == want, sink_server.log()[-2000:]
    assert chdb_totals() == want, sink_chdb.log()[-2000:]

    # The embedded store keeps its counts on disk after the sink stops.
    assert sink_chdb.stop() == 0
    store = EmbeddedStatsStore(tmp_path / "data" / "clickhouse")
    try:
        assert {(t, v, a): int(n) for t, v, a, n in store.query(query)} == want
    finally:
        store.close()
    for p in (ingest, worker, sink_server):
        assert p.stop() == 0, p.log()[-2000:]
