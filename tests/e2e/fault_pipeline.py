"""A whole Postwarden on loopback for the fault tests, started once per module.

The broker is the durable profile of `postwarden up` (Tansu on SeaweedFS), so
restarting it keeps its data like a real broker. ClickHouse and clamd are
instances of this module's own (the session ones serve other tests and must
not be stopped). Each test gets a tenant of its own, with its own downstream
SMTP server, so its counts, queue and deliveries are its alone, while the
audit still checks every downstream server for copies received twice.
"""

from __future__ import annotations

import signal
from pathlib import Path

import yaml

from postwarden.keyring import Keyring, new_master_key, write_keys_file
from postwarden.local_services import ClickHouseServer, SeaweedFS, Tansu, free_port
from postwarden.topics import DELIVER, DELIVER_RETRY_TIERS, INBOUND, QUARANTINE, RESCAN, VERDICTS, create_topics
from sinks.stats_store import ServerStatsStore, StoreError
from streams.clamd_service import ClamdServer
from tests.conftest import Process, service_env, wait_http_ok
from tests.e2e.audit import Ledger, QuarantineReader, Report, audit
from tests.smtp_servers import Received, SmtpServer, start_server

TENANTS = ("brk", "wrk", "dlv", "chs", "clam", "dfr")
COMMANDS = {"worker": ["worker"], "delivery": ["sink", "delivery"], "stats": ["sink", "stats"],
            "ingest": ["ingest"]}
APP_ID = "postwarden"
# Consumer groups whose committed offsets must reach the end before an audit is final.
GROUPS = {APP_ID: (INBOUND.name, VERDICTS.name, QUARANTINE.name, RESCAN.name),
          f"{APP_ID}-delivery": (DELIVER.name, *(t.name for t in DELIVER_RETRY_TIERS))}


class FaultPipeline:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.smtp_port = free_port()
        self.health = {name: free_port() for name in COMMANDS}
        self.processes: dict[str, Process] = {}
        self.downstream: dict[str, SmtpServer] = {}
        self.storage: SeaweedFS | None = None
        self.broker: Tansu | None = None
        self.clickhouse: ClickHouseServer | None = None
        self.clamd: ClamdServer | None = None

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> FaultPipeline:
        self.storage = SeaweedFS(self.tmp / "broker").start()
        self.broker = Tansu(log_path=self.tmp / "tansu.log", s3=self.storage).start()
        create_topics([self.broker.bootstrap], partitions=2, timeout=60)
        self.clickhouse = ClickHouseServer(self.tmp / "clickhouse").start()
        self.clamd = ClamdServer(self.tmp / "clamd").start()
        for tenant in TENANTS:
            self.downstream[tenant] = start_server()
        (self.tmp / "tenants.yaml").write_text(yaml.safe_dump({"tenants": [
            {"id": t, "domains": [f"{t}.test"], "relay_networks": ["127.0.0.0/8"],
             "downstream": [{"host": "127.0.0.1", "port": self.downstream[t].port, "tls": "none"}]}
            for t in TENANTS]}))
        write_keys_file(self.tmp / "keys.json", [new_master_key("k1")])
        for name in COMMANDS:  # consumers first, the SMTP door last (as `postwarden up` does)
            self.start_process(name)
        for name in COMMANDS:
            self.wait_ready(name)
        return self

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        for server in self.downstream.values():
            server.stop()
        for service in (self.clamd, self.clickhouse, self.broker, self.storage):
            if service is not None:
                service.stop()

    def env(self, name: str, **extra: str) -> dict[str, str]:
        assert self.broker is not None and self.clickhouse is not None and self.clamd is not None
        env = service_env(
            self.tmp, self.broker.bootstrap,
            POSTWARDEN_APP_ID=APP_ID,
            POSTWARDEN_TENANTS_FILE=str(self.tmp / "tenants.yaml"),
            POSTWARDEN_KEYS_FILE=str(self.tmp / "keys.json"),
            POSTWARDEN_HEALTH_PORT=str(self.health[name]),
            POSTWARDEN_SMTP_PORT=str(self.smtp_port),
            # The durable local broker's profile (see postwarden.supervisor).
            POSTWARDEN_CLAMD_ADDRESS=self.clamd.address,
            POSTWARDEN_CLICKHOUSE_URL=self.clickhouse.url,
            POSTWARDEN_STATS_WINDOW_SECONDS="2", POSTWARDEN_STATS_GRACE_SECONDS="0.5",
            POSTWARDEN_STATS_K_ANONYMITY="1",
            POSTWARDEN_DELIVERY_RETRY_DELAYS="1,1,2,2", POSTWARDEN_DELIVERY_TIMEOUT="5",
            POSTWARDEN_DELIVERY_COMMIT_SECONDS="0.5", POSTWARDEN_RESCAN_BACKOFF_MAX="1")
        env.update(extra)
        return env

    def start_process(self, name: str, **extra: str) -> Process:
        proc = Process(COMMANDS[name], self.env(name, **extra),
                       self.tmp / f"{name}.log").start()
        self.processes[name] = proc
        return proc

    def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        wait_http_ok(f"http://127.0.0.1:{self.health[name]}/readyz", timeout, self.processes[name])

    def kill(self, name: str) -> None:
        proc = self.processes[name].proc
        assert proc is not None and proc.poll() is None, f"{name} is not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, name: str, **extra: str) -> Process:
        """Stops a component cleanly (if running) and starts it again with these settings."""
        self.processes[name].stop()
        proc = self.start_process(name, **extra)
        self.wait_ready(name)
        return proc

    def assert_running(self) -> None:
        for name, proc in self.processes.items():
            assert proc.proc is not None and proc.proc.poll() is None, \
                f"{name} exited:\n{proc.log()[-3000:]}"

    def log(self, name: str) -> str:
        return self.processes[name].log()

    # --- observing ----------------------------------------------------------------------

    def received(self, tenant: str) -> list[Received]:
        return list(self.downstream[tenant].recorder.received)

    def received_everywhere(self) -> list[Received]:
        return [r for s in self.downstream.values() for r in list(s.recorder.received)]

    def audit(self, ledger: Ledger, tenant: str, timeout: float = 60.0) -> Report:
        assert self.broker is not None
        reader = QuarantineReader(f"http://127.0.0.1:{self.health['worker']}",
                                  Keyring.load(self.tmp / "keys.json"))
        return audit(ledger, lambda: self.received(tenant), reader, self.broker.bootstrap, GROUPS,
                     timeout, everything_received=self.received_everywhere)

    def stats_total(self, tenant: str) -> int:
        """Messages counted in ClickHouse for a tenant; -1 while it cannot be asked."""
        assert self.clickhouse is not None
        store = ServerStatsStore(self.clickhouse.url, connect_timeout=2)
        try:
            rows = store.query(
                f"SELECT sum(messages) FROM postwarden.stats_counts FINAL WHERE tenant = '{tenant}'")
        except StoreError:
            return -1
        finally:
            store.close()
        return int(rows[0][0] or 0)

