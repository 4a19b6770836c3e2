"""Invariant 3: nothing personal reaches ClickHouse, on either backend.

Mail with known addresses, a known client IP, HELO name, subjects and message
ids goes through the whole pipeline (SMTP ingest, Faust worker, stats windows
and sink as processes). Then every column of every table in the postwarden
database is read back as text and searched for those values and for anything
shaped like an address or an IP.
"""

from __future__ import annotations

import json
import re
import smtplib
import time
import urllib.request

import pytest

from postwarden.local_services import free_port
from sinks.stats_store import EmbeddedStatsStore, ServerStatsStore
from tests.conftest import service_env, wait_http_ok

pytestmark = pytest.mark.slow

K = 5
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SENDER = "carol.secret@sender-corp.example"
RECIPIENTS = ["dave.private@example.com", "erin.hidden@example.net"]
CLIENT_IP = "127.0.0.77"
HELO = "relay7.leaky-host.example"

ADDRESS_SHAPE = re.compile(r"[^\s@'\"]+@[^\s@'\"]+")
IPV4_SHAPE = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
IPV6_SHAPE = re.compile(r"(?i)(?<![0-9a-z:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?![0-9a-z:])")


def scan(store) -> list[str]:
    """Every value of every column of every postwarden table, as text; DateTime columns as
    epoch numbers (a time of day would look like an IPv6 fragment)."""
    found = []
    tables = [r[0] for r in store.query(
        "SELECT name FROM system.tables WHERE database = 'postwarden' AND engine NOT LIKE '%View'")]
    assert tables
    for table in tables:
        columns = store.query(f"SELECT name, type FROM system.columns WHERE database = 'postwarden' "
                              f"AND table = '{table}'")
        exprs = [f"toString(toUInt32({n}))" if t.startswith("DateTime") else f"toString({n})"
                 for n, t in columns]
        for row in store.query(f"SELECT {', '.join(exprs)} FROM postwarden.{table}"):
            found.extend(f"{table}.{name}={value}" for (name, _), value in zip(columns, row))
    # Table and column names are data too.
    found += [f"table={t}" for t in tables]
    return found


def leaks(values: list[str], needles: list[str]) -> list[str]:
    out = []
    for v in values:
        text = v.split("=", 1)[1]
        if any(n.lower() in text.lower() for n in needles) or ADDRESS_SHAPE.search(text) \
                or IPV4_SHAPE.search(text) or IPV6_SHAPE.search(text):
            out.append(v)
    return out


def k_anonymous(store) -> bool:
    small = store.query(
        f"SELECT count() FROM postwarden.stats_counts FINAL WHERE verdict != 'other' AND messages < {K}")
    small_h = store.query(
        f"SELECT count() FROM postwarden.stats_histograms FINAL WHERE le >= 0 AND messages < {K} "
        "AND messages > 0")
    small_f = store.query(
        f"SELECT count() FROM postwarden.stats_virus_families FINAL WHERE family != 'other' "
        f"AND messages < {K}")
    return int(small[0][0]) == int(small_h[0][0]) == int(small_f[0][0]) == 0


def test_no_personal_data_reaches_either_clickhouse_backend(broker, clickhouse_server, spawn, tmp_path):
    ServerStatsStore(clickhouse_server.url).query("DROP DATABASE IF EXISTS postwarden")
    smtp_port, ingest_health, chdb_health, server_health, worker_health = (free_port() for _ in range(5))
    base = service_env(tmp_path, broker.bootstrap, POSTWARDEN_STATS_WINDOW_SECONDS="2",
                       POSTWARDEN_STATS_GRACE_SECONDS="0.5", POSTWARDEN_STATS_K_ANONYMITY=str(K))
    worker = spawn(["worker"], {**base, "POSTWARDEN_HEALTH_PORT": str(worker_health)}, "worker")
    ingest = spawn(["ingest"], {**base, "POSTWARDEN_SMTP_PORT": str(smtp_port),
                                "POSTWARDEN_HEALTH_PORT": str(ingest_health)}, "ingest")
    sink_chdb = spawn(["sink", "stats"], {**base, "POSTWARDEN_HEALTH_PORT": str(chdb_health)}, "sink-chdb")
    sink_server = spawn(["sink", "stats"], {
        **base, "POSTWARDEN_HEALTH_PORT": str(server_health), "POSTWARDEN_APP_ID": "pw-server-sink",
        "POSTWARDEN_CLICKHOUSE_URL": clickhouse_server.url}, "sink-server")
    for url, proc in ((ingest_health, ingest), (worker_health, worker), (chdb_health, sink_chdb),
                      (server_health, sink_server)):
        wait_http_ok(f"http://127.0.0.1:{url}/readyz", 60, proc)

    needles = [SENDER, *RECIPIENTS, CLIENT_IP, HELO, "sender-corp", "leaky-host"]
    needles += [a.split("@")[0] for a in [SENDER, *RECIPIENTS]]
    plan = ([b"Lunch on Friday?"] * 8 + [b"lottery winner 100% free viagra"] * 3 + [EICAR])
    sent = 0
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30, source_address=(CLIENT_IP, 0)) as smtp:
        smtp.ehlo(HELO)
        for i, body in enumerate(plan):
            subject = f"Salary review for Dave number {i}"
            header_id = f"<private-{i}-{time.time_ns()}@sender-corp.example>"
            raw = (f"From: {SENDER}\r\nTo: {', '.join(RECIPIENTS)}\r\nSubject: {subject}\r\n"
                   f"Message-ID: {header_id}\r\n\r\n").encode() + body + b"\r\n"
            smtp.mail(SENDER)
            for r in RECIPIENTS:
                assert smtp.rcpt(r)[0] == 250
            code, reply = smtp.data(raw)
            assert code == 250, reply
            needles += [subject, header_id.strip("<>"), reply.decode().rsplit(" ", 1)[1]]
            sent += len(RECIPIENTS)
    server_store = ServerStatsStore(clickhouse_server.url)

    def total(store) -> int:
        return int(store.query("SELECT sum(messages) FROM postwarden.stats_counts FINAL")[0][0] or 0)

    def chdb_total() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{chdb_health}/stats", timeout=5) as r:
            return sum(x["messages"] for x in json.load(r))

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (total(server_store) < sent or chdb_total() < sent):
        time.sleep(0.5)
    assert total(server_store) == sent, sink_server.log()[-3000:]
    assert chdb_total() == sent, sink_chdb.log()[-3000:]
    assert sink_chdb.stop() == 0, sink_chdb.log()[-2000:]
    chdb_store = EmbeddedStatsStore(tmp_path / "data" / "clickhouse")
    try:
        for store in (server_store, chdb_store):
            assert total(store) == sent, store.backend
            assert k_anonymous(store), store.backend
            values = scan(store)
            assert len(values) > 50
            assert leaks(values, needles) == [], store.backend
            # The scan does find a planted value: it is not blind.
            store.execute("CREATE TABLE postwarden.leak_probe (note String, at DateTime) "
                          "ENGINE = MergeTree ORDER BY at")
            store.execute(f"INSERT INTO postwarden.leak_probe SELECT 'to {RECIPIENTS[0]}', now()")
            assert leaks(scan(store), needles) == [f"leak_probe.note=to {RECIPIENTS[0]}"]
            store.execute("DROP TABLE postwarden.leak_probe")
    finally:
        chdb_store.close()
    for p in (ingest, worker, sink_server):
        assert p.stop() == 0, p.log()[-2000:]
