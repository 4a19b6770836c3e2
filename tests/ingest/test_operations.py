"""Operations: readiness follows the broker, metrics count what happened, and
logs carry message and tenant ids only (no addresses, IPs or subjects)."""

import asyncio
import io
import logging
import os
import signal
import urllib.error
import urllib.request

from postwarden.logs import JsonFormatter, setup_logging
from tests.ingest.smtp_client import RawSMTP

BODY = b"From: alice@example.org\r\nSubject: secret plans\r\n\r\nhello\r\n"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def wait_ready(port: int, want: int, timeout: float = 15) -> None:
    for _ in range(int(timeout / 0.2)):
        if (await asyncio.to_thread(get, port, "/readyz"))[0] == want:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz never answered {want}")


async def test_readyz_follows_the_broker_and_healthz_stays_up(make_node, broker):
    node = await make_node()
    port = node.settings.health_port
    await wait_ready(port, 200)
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        await wait_ready(port, 503)
        assert (await asyncio.to_thread(get, port, "/healthz"))[0] == 200
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    await wait_ready(port, 200)


async def test_metrics_count_sessions_messages_bytes_rejects_and_produce_latency(make_node):
    node = await make_node()
    c = await RawSMTP.connect(node.settings.smtp_port)
    await c.cmd("EHLO client.test")
    assert (await c.transaction("a@x.example", ["b@example.com"], BODY))[0] == 250
    assert (await c.transaction("a@x.example", ["v@elsewhere.example"], BODY))[0] == 550
    assert (await c.cmd("BOGUS"))[0] == 500
    _, text = await asyncio.to_thread(get, node.settings.health_port, "/metrics")
    await c.close()
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line.startswith("postwarden_ingest")}
    assert lines["postwarden_ingest_sessions"] >= 1
    assert lines["postwarden_ingest_messages_total"] >= 1
    assert lines["postwarden_ingest_bytes_total"] >= len(BODY)
    assert lines["postwarden_ingest_connections_total"] >= 1
    assert lines['postwarden_ingest_rejects_total{reason="relay_denied"}'] >= 1
    assert lines['postwarden_ingest_rejects_total{reason="syntax"}'] >= 1
    assert lines["postwarden_ingest_produce_seconds_count"] >= 1
    assert "example" not in text.replace("postwarden_ingest", "")  # no per-user labels


async def test_logs_carry_no_addresses_ips_or_subjects(make_node, broker):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("DEBUG")
    out = io.StringIO()
    capture = logging.StreamHandler(out)
    capture.setFormatter(JsonFormatter())
    root.addHandler(capture)
    try:
        node = await make_node(POSTWARDEN_PRODUCE_TIMEOUT="0.5")
        c = await RawSMTP.connect(node.settings.smtp_port)
        await c.cmd("EHLO client.test")
        await c.cmd("NOSUCHCOMMAND alice@example.com")
        assert (await c.transaction("alice@example.org", ["bob@example.com"], BODY))[0] == 250
        await c.transaction("alice@example.org", ["v@elsewhere.example"], BODY)
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            assert (await c.transaction("alice@example.org", ["bob@example.com"], BODY))[0] == 451
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        await c.close()
        await node.stop(drain_seconds=1)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    logged = out.getvalue()
    assert '"message_id"' in logged and '"tenant": "example"' in logged  # ids are logged
    for secret in ("@", "127.0.0.1", "secret plans", "client.test"):
        assert secret not in logged, f"{secret!r} leaked into the logs"
