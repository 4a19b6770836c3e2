"""`postwarden sink delivery` as a process: restarts, a SIGKILL between send and commit, `queue`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from postwarden.local_services import free_port
from tests.conftest import REPO, service_env, wait_http_ok
from tests.delivery_helpers import logged, message, produce, wait
from tests.smtp_servers import start_server, tenants_yaml

pytestmark = pytest.mark.slow


@pytest.fixture
def server():
    s = start_server()
    yield s
    s.stop()


def env_for(broker, tmp_path, port: int, health: int, **extra: str) -> dict[str, str]:
    tenants = tenants_yaml(tmp_path / "tenants.yaml", [{"host": "127.0.0.1", "port": port, "tls": "none"}])
    return service_env(tmp_path, broker.bootstrap, POSTWARDEN_TENANTS_FILE=str(tenants),
                       POSTWARDEN_HEALTH_PORT=str(health), POSTWARDEN_DELIVERY_TIMEOUT="2",
                       POSTWARDEN_DELIVERY_RETRY_DELAYS="1,1,1,1", **extra)


def test_no_duplicate_after_sigkill_between_send_and_commit(broker, tmp_path, spawn, server):
    health = free_port()
    # Offsets are committed only once a minute: everything is delivered, nothing committed.
    env = env_for(broker, tmp_path, server.port, health, POSTWARDEN_DELIVERY_COMMIT_SECONDS="60")
    sink = spawn(["sink", "delivery"], env, "delivery-1")
    wait_http_ok(f"http://127.0.0.1:{health}/readyz", 60, sink)
    msgs = [message(f"u{i}@acme.test") for i in range(20)]
    produce(broker.bootstrap, msgs)
    assert len(server.recorder.wait_for(20, 60)) == 20
    # The kill must land after each outcome is on the delivered-log: a kill between the
    # downstream 250 and that write re-delivers, a window SMTP cannot close (RFC 1047).
    assert wait(lambda: len(logged(sink, "delivered")) == 20, 30), sink.log()[-2000:]
    sink.proc.send_signal(signal.SIGKILL)
    sink.proc.wait(10)

    again = spawn(["sink", "delivery"], {**env, "POSTWARDEN_DELIVERY_COMMIT_SECONDS": "0.5"}, "delivery-2")
    wait_http_ok(f"http://127.0.0.1:{health}/readyz", 60, again)
    assert wait(lambda: len(logged(again, "already delivered, skipped")) == 20, 60), again.log()[-2000:]
    assert sorted(r.rcpt_tos[0] for r in server.recorder.received) == sorted(m.recipient for m in msgs)
    assert {e["message_id"] for e in logged(again, "already delivered, skipped")} == {m.message_id for m in msgs}
    log_text = sink.log() + again.log()
    assert "acme.test" not in log_text and "bob@x.example" not in log_text  # ids only in logs


def test_deferred_mail_survives_a_restart_and_the_queue_shows_it(broker, tmp_path, spawn, server):
    server.behaviour.rcpt_reply = "451 4.3.0 greylisted"
    health = free_port()
    env = env_for(broker, tmp_path, server.port, health)
    sink = spawn(["sink", "delivery"], env, "delivery-1")
    wait_http_ok(f"http://127.0.0.1:{health}/readyz", 60, sink)
    msgs = [message("ann@acme.test"), message("bo@acme.test")]
    produce(broker.bootstrap, msgs)
    assert wait(lambda: len(logged(sink, "deferred")) >= 4, 60), sink.log()[-2000:]
    assert sink.stop() == 0

    cli = [sys.executable, "-m", "postwarden.cli", "queue"]
    out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("acme\t"))
    assert row.split("\t")[1:3] == [f"127.0.0.1:{server.port}", "2"]
    assert "@" not in out.stdout  # no addresses in the overview
    one = subprocess.run([*cli, "--message-id", msgs[0].message_id], env=env, capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert one.returncode == 0 and "ann@acme.test" in one.stdout and "bo@acme.test" not in one.stdout
    assert "451 4.3.0 greylisted" in one.stdout

    server.behaviour.rcpt_reply = None
    again = spawn(["sink", "delivery"], env, "delivery-2")
    assert len(server.recorder.wait_for(2, 60)) == 2, again.log()[-2000:]
    time.sleep(2)
    assert sorted(r.rcpt_tos[0] for r in server.recorder.received) == ["ann@acme.test", "bo@acme.test"]
    with urllib.request.urlopen(f"http://127.0.0.1:{health}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert 'postwarden_delivery_outcomes_total{outcome="delivered",tenant="acme"} 2.0' in metrics
    assert "acme.test" not in metrics
    after = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "nothing is waiting for delivery" in after.stdout, after.stdout


def test_sink_commands_refuse_to_start_without_a_broker(tmp_path):
    env = service_env(tmp_path, "")
    for args in (["sink", "delivery"], ["sink", "notify"], ["queue"]):
        out = subprocess.run([sys.executable, "-m", "postwarden.cli", *args], env=env,
                             capture_output=True, text=True, timeout=60, cwd=REPO)
        assert out.returncode == 2 and "POSTWARDEN_BOOTSTRAP_SERVERS is not set" in out.stderr
