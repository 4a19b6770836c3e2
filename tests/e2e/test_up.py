"""`postwarden up` as a user runs it: one command, a crash-restarting supervisor,
a clean stop, and what survives a restart (topics on disk, counts in chdb)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postwarden.local_services import free_port, free_port_pair, port_is_free
from postwarden.records import RoutedMessage
from streams.clamd_service import EICAR
from tests.conftest import REPO, wait_http_ok
from tests.kafka_reader import read_topic

pytestmark = pytest.mark.slow


class Up:
    def __init__(self, tmp: Path, ports: dict[str, int]) -> None:
        self.tmp, self.ports = tmp, ports
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWARDEN_")}
        self.env.update({
            "POSTWARDEN_DATA_DIR": str(tmp / "var"),
            "POSTWARDEN_SMTP_PORT": str(ports["smtp"]),
            "POSTWARDEN_HEALTH_PORT": str(ports["health"]),
            "POSTWARDEN_LOCAL_BROKER_PORT": str(ports["broker"]),
            "POSTWARDEN_LOCAL_STORAGE_PORT": str(ports["storage"]),
            "POSTWARDEN_STATS_FLUSH_SECONDS": "0.5",
            # Short windows and k = 1 so one message shows as a count within seconds.
            "POSTWARDEN_STATS_WINDOW_SECONDS": "2",
            "POSTWARDEN_STATS_GRACE_SECONDS": "0.5",
            "POSTWARDEN_STATS_K_ANONYMITY": "1",
        })
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.out = open(self.tmp / "up.out", "ab")
        self.err_path = self.tmp / f"up-{time.monotonic_ns()}.err"
        self.proc = subprocess.Popen([sys.executable, "-m", "postwarden.cli", "up"], env=self.env,
                                     cwd=REPO, stdout=self.out, stderr=open(self.err_path, "wb"))
        h = self.ports["health"]
        for offset in (1, 2, 3):
            wait_http_ok(f"http://127.0.0.1:{h + offset}/readyz", 90)

    def pids(self) -> dict[str, int]:
        found = {}
        for line in self.err_path.read_text().splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                if rec.get("msg") in ("started", "local broker started", "broker storage started",
                                      "virus scanner started"):
                    found[rec["child"]] = rec["pid"]
        return found

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "postwarden.cli", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_runs_restarts_crashed_children_stops_cleanly_and_keeps_data(tmp_path):
    ports = {"smtp": free_port(), "health": free_port_pair(), "broker": free_port(),
             "storage": free_port_pair()}
    up = Up(tmp_path, ports)
    up.start()
    try:
        banner = (tmp_path / "up.out").read_text()
        assert f"127.0.0.1:{ports['smtp']}" in banner and "postwarden send" in banner
        assert "Virus scan:    clamd at unix://" in banner

        sent = up.cli("send", str(REPO / "examples/hello.eml"), "--to", "alice@example.com")
        assert sent.returncode == 0, sent.stderr
        assert "accepted for 1 recipient" in sent.stdout
        wait_for(lambda: "example\tclean\tdeliver\t1" in up.cli("stats").stdout, 30, "count in stats")
        # Operator commands in another shell find the broker `up` started.
        queue = up.cli("queue")
        # (No mailbox server listens for the example tenant: the message waits for delivery.)
        assert queue.returncode == 0, queue.stderr
        assert "nothing is waiting for a virus rescan" in queue.stdout and "\nexample\t" in queue.stdout

        # `up` runs clamd itself: a virus is found and held, not delivered.
        eicar = tmp_path / "eicar.eml"
        eicar.write_bytes(b"From: a@example.org\r\nTo: alice@example.com\r\nSubject: test\r\n\r\n"
                          + EICAR + b"\r\n")
        assert up.cli("send", str(eicar), "--to", "alice@example.com").returncode == 0
        wait_for(lambda: "example\tvirus\tquarantine\t1" in up.cli("stats").stdout, 30, "virus count")

        # A crashed child is restarted and serves again.
        old = up.pids()["ingest"]
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (p := up.pids().get("ingest")) != old and p, 30, "ingest restart")
        wait_http_ok(f"http://127.0.0.1:{ports['health'] + 1}/readyz", 60)
        assert up.cli("send", str(REPO / "examples/spam.eml"), "--to", "bob@example.net").returncode == 0
        wait_for(lambda: "example\tspam\tquarantine\t1" in up.cli("stats").stdout, 30, "spam count")

        pids = up.pids()
        assert up.stop() == 0
        assert not any(alive(p) for p in pids.values()), pids
        assert port_is_free("127.0.0.1", ports["smtp"])
        refused = up.cli("queue")
        assert refused.returncode == 2 and "no `postwarden up` is running" in refused.stderr
        assert new != old

        # Restart on the same data directory: topics and counts are still there.
        up.start()
        bootstrap = f"127.0.0.1:{ports['broker']}"
        records = read_topic(bootstrap, "mail.deliver", lambda r: len(r) >= 1, timeout=20)
        # (The virus alert to alice is on mail.deliver too.)
        clean = [m.recipient for m in map(RoutedMessage.decode, (r.value for r in records))
                 if m.reason == "clean"]
        assert clean == ["alice@example.com"]
        stats = up.cli("stats").stdout
        assert "example\tclean\tdeliver\t1" in stats and "example\tspam\tquarantine\t1" in stats
    finally:
        if up.proc and up.proc.poll() is None:
            up.stop()


def test_up_with_a_bad_tenants_file_fails_before_starting_anything(tmp_path):
    bad = tmp_path / "tenants.yaml"
    bad.write_text("tenants:\n  - id: x\n    domains: [x.example]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWARDEN_")}
    env.update(POSTWARDEN_TENANTS_FILE=str(bad), POSTWARDEN_DATA_DIR=str(tmp_path / "var"))
    out = subprocess.run([sys.executable, "-m", "postwarden.cli", "up"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert str(bad) in out.stderr and "tenants.0.relay_networks: Field required" in out.stderr
    assert not (tmp_path / "var").exists()


def test_a_killed_supervisor_leaves_nothing_running(tmp_path):
    ports = {"smtp": free_port(), "health": free_port_pair(), "broker": free_port(),
             "storage": free_port_pair()}
    up = Up(tmp_path, ports)
    up.env["POSTWARDEN_LOCAL_BROKER_STORAGE"] = "memory"
    up.start()
    wait_http_ok(f"http://127.0.0.1:{ports['health'] + 5}/readyz", 60)  # delivery sink
    pids = up.pids()
    assert {"tansu", "clamd", "ingest", "worker", "delivery"} <= set(pids), pids
    try:
        up.proc.send_signal(signal.SIGKILL)
        up.proc.wait(10)
        # Children get SIGTERM from the kernel when the supervisor dies and stop as on Ctrl-C.
        # The sinks' clean stop waits out its broker timeouts, the broker being gone too.
        wait_for(lambda: not any(alive(p) for p in pids.values()), 60,
                 f"children of a killed supervisor to stop: {pids}")
        assert port_is_free("127.0.0.1", ports["smtp"])
    finally:
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_up_with_a_database_clamd_refuses_fails_clearly_and_leaves_nothing_running(tmp_path):
    broken = tmp_path / "clamav"
    broken.mkdir()
    (broken / "broken.ndb").write_text("not a signature line\n")
    ports = {"smtp": free_port(), "health": free_port_pair(), "broker": free_port(),
             "storage": free_port_pair()}
    up = Up(tmp_path, ports)
    up.env.update(POSTWARDEN_LOCAL_BROKER_STORAGE="memory", POSTWARDEN_LOCAL_CLAMD_DATABASES=str(broken))
    out = subprocess.run([sys.executable, "-m", "postwarden.cli", "up"], env=up.env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "postwarden up: cannot start clamd: clamd did not start" in out.stderr, out.stderr[-2000:]
    assert "Malformed database" in out.stderr  # clamd's own complaint
    assert port_is_free("127.0.0.1", ports["broker"]) and port_is_free("127.0.0.1", ports["smtp"])
