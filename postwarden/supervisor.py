"""`postwarden up`: every part of Postwarden on one machine, under one supervisor.

Children are separate processes (a crash in one cannot take down another, and
the embedded ClickHouse lock belongs to the stats sink alone). A child that
exits is restarted with growing backoff; SIGINT or SIGTERM stops them in
reverse order of start: first the SMTP door closes, the broker goes last.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from kafka.errors import KafkaError

from postwarden import up_marker
from postwarden.config import Settings
from postwarden.kafka_security import client_kwargs
from postwarden.local_services import (
    SeaweedFS, ServiceError, Tansu, die_with_parent, stop_pid, wait_port_free,
)
from postwarden.logs import setup_logging
from postwarden.topics import create_topics
from streams.clamd_service import ClamdServer, clamd_binary

log = logging.getLogger(__name__)

# Start order: consumers before the SMTP door opens; stop order is the reverse.
CHILDREN = ("delivery", "notify", "stats", "worker", "web", "ingest")
_ARGS = {"ingest": ["ingest"], "worker": ["worker"], "stats": ["sink", "stats"], "web": ["web"],
         "delivery": ["sink", "delivery"], "notify": ["sink", "notify"]}
_PORT_OFFSET = {"ingest": 1, "worker": 2, "stats": 3, "web": 4, "delivery": 5, "notify": 6}


def child_health_port(settings: Settings, name: str) -> int:
    """Children of `up` get fixed health ports after POSTWARDEN_HEALTH_PORT.

    Worker processes after the first are "worker-2", "worker-3", ..., on the ports
    after the last fixed one.
    """
    if not settings.health_port:
        return 0
    if name.startswith("worker-"):
        return settings.health_port + max(_PORT_OFFSET.values()) + int(name.split("-")[1]) - 1
    return settings.health_port + _PORT_OFFSET[name]


def child_names(settings: Settings) -> list[str]:
    """In start order; the worker appears once per POSTWARDEN_WORKER_PROCESSES."""
    names: list[str] = []
    for name in CHILDREN:
        names.append(name)
        if name == "worker":
            names += [f"worker-{i}" for i in range(2, settings.worker_processes + 1)]
    return names


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = field(default=1.0)

    def start(self) -> None:
        # Own session: Ctrl-C reaches the supervisor alone, which stops children in order.
        self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True,
                                     preexec_fn=die_with_parent)
        self.started_at = time.monotonic()
        log.info("started", extra={"child": self.name, "pid": self.proc.pid})


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker: Tansu | None = None
        self.storage: SeaweedFS | None = None
        self.clamd: ClamdServer | None = None
        self.children: list[Child] = []
        self._stop = threading.Event()

    def _env(self, bootstrap: str, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env["POSTWARDEN_BOOTSTRAP_SERVERS"] = bootstrap
        env["POSTWARDEN_DATA_DIR"] = str(self.settings.data_dir.resolve())
        env["POSTWARDEN_HEALTH_PORT"] = str(child_health_port(self.settings, name))
        if self.settings.tenants_file:
            env["POSTWARDEN_TENANTS_FILE"] = str(self.settings.tenants_file.resolve())
        if self.clamd is not None:
            env["POSTWARDEN_CLAMD_ADDRESS"] = self.clamd.unix_address
        if name == "web" and child_health_port(self.settings, "worker"):
            env["POSTWARDEN_WORKER_URL"] = f"http://127.0.0.1:{child_health_port(self.settings, 'worker')}"
        return env

    def _start_broker(self) -> str:
        if self.settings.bootstrap_list:
            return self.settings.bootstrap_servers
        logs = self.settings.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if self.settings.local_broker_storage == "disk":
            base = self.settings.local_storage_port
            self.storage = SeaweedFS(self.settings.data_dir / "broker",
                                     ports=(base, base + 1, base + 2, base + 3), tied_to_parent=True)
            self.storage.start()
            log.info("broker storage started", extra={"child": "seaweedfs", "pid": self.storage.proc.pid})
        self.broker = Tansu(port=self.settings.local_broker_port, log_path=logs / "tansu.log",
                            s3=self.storage, tied_to_parent=True)
        self.broker.start()
        log.info("local broker started", extra={"child": "tansu", "pid": self.broker.proc.pid})
        return self.broker.bootstrap

    def _start_clamd(self) -> None:
        if self.settings.clamd_address or not self.settings.local_clamd:
            return
        try:
            clamd_binary()
        except ServiceError as exc:
            log.warning("no virus scanner: verdicts say unscanned", extra={"reason": str(exc)})
            return
        self.clamd = ClamdServer(self.settings.data_dir.resolve() / "clamd",
                                 databases=self.settings.local_clamd_databases, tied_to_parent=True)
        if not self.clamd.database_files():
            log.warning("clamd has only the EICAR test signature: run freshclam for ClamAV's databases",
                        extra={"child": "clamd"})
        self._launch_clamd()

    def _launch_clamd(self) -> None:
        # A full ClamAV database takes a while to load.
        self.clamd.start(timeout=180)
        log.info("virus scanner started", extra={"child": "clamd", "pid": self.clamd.proc.pid})

    def _create_topics(self, bootstrap: str) -> None:
        create_topics(bootstrap.split(","), self.settings.topic_partitions,
                      self.settings.replication_factor, timeout=60,
                      security=client_kwargs(self.settings))

    def run(self) -> int:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            bootstrap = self._start_broker()
            self._create_topics(bootstrap)
        except (ServiceError, KafkaError, OSError) as exc:
            print(f"postwarden up: cannot start the broker: {exc}", file=sys.stderr)
            self._shutdown()
            return 1
        try:
            self._start_clamd()
        except ServiceError as exc:
            print(f"postwarden up: cannot start clamd: {exc}", file=sys.stderr)
            self._shutdown()
            return 1
        if self.broker is not None:
            up_marker.publish(self.settings.data_dir, bootstrap)
        wait_port_free(self.settings.smtp_host, self.settings.smtp_port, timeout=5)
        for name in child_names(self.settings):
            child = Child(name, [sys.executable, "-m", "postwarden.cli", *_ARGS[name.split("-")[0]]],
                          self._env(bootstrap, name))
            child.start()
            self.children.append(child)
        self._banner()
        while not self._stop.wait(0.5):
            self._watch(bootstrap)
        self._shutdown()
        return 0

    def _watch(self, bootstrap: str) -> None:
        if self.storage and self.storage.proc and self.storage.proc.poll() is not None:
            log.error("broker storage exited, restarting", extra={
                "child": "seaweedfs", "returncode": self.storage.proc.returncode})
            self.storage.start()
        if self.broker and self.broker.proc and self.broker.proc.poll() is not None:
            log.error("local broker exited, restarting", extra={
                "child": "tansu", "returncode": self.broker.proc.returncode})
            self.broker.start()
            # With memory storage a restarted broker has no topics until we create them again.
            self._create_topics(bootstrap)
        if self.clamd and self.clamd.proc and self.clamd.proc.poll() is not None:
            # Meanwhile the workers hold mail on mail.rescan, never passing it unscanned.
            log.error("clamd exited, restarting", extra={
                "child": "clamd", "returncode": self.clamd.proc.returncode})
            self.clamd.stop()
            self._launch_clamd()
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                if child.proc and time.monotonic() - child.started_at > 60:
                    child.backoff = 1.0
                continue
            code = child.proc.returncode
            log.error("child exited, restarting", extra={
                "child": child.name, "returncode": code, "attempt": child.restarts + 1})
            if self._stop.wait(child.backoff):
                return
            child.backoff = min(child.backoff * 2, 30.0)
            child.restarts += 1
            child.start()

    def _banner(self) -> None:
        s = self.settings
        tenants = s.tenants()
        domain = tenants.all[0].domains[0]
        print(
            "\nPostwarden is up.\n"
            f"  SMTP ingest:   {s.smtp_host}:{s.smtp_port}  (domains: "
            f"{', '.join(d for t in tenants.all for d in t.domains)})\n"
            f"  Health/metrics: http://{s.health_host}:{child_health_port(s, 'ingest')}/metrics (ingest), "
            f":{child_health_port(s, 'worker')} (worker), :{child_health_port(s, 'stats')} (stats sink)\n"
            f"  Message Center: {s.public_url}  (users: postwarden users import, or the API at /api/v1)\n"
            f"  Virus scan:    {self._virus_scan()}\n"
            f"  Analytics:     {s.clickhouse_url or 'embedded ClickHouse at ' + str((s.data_dir / 'clickhouse').resolve())}\n"
            "Send a message:\n"
            f"  postwarden send examples/hello.eml --to alice@{domain}\n"
            "See the counts once the minute has closed (cells under k messages show as 'other'):\n"
            "  postwarden stats\n"
            "Stop with Ctrl-C.\n",
            flush=True,
        )

    def _virus_scan(self) -> str:
        if self.clamd is None:
            return self.settings.clamd_address or "off (clamd not installed, or POSTWARDEN_LOCAL_CLAMD=false)"
        n = len(self.clamd.database_files())
        return (f"clamd at {self.clamd.unix_address} ("
                + (f"{n} ClamAV database files)" if n else "EICAR test signature only; run freshclam)"))

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def _shutdown(self) -> None:
        up_marker.withdraw(self.settings.data_dir)
        for child in reversed(self.children):
            if child.proc is not None:
                stop_pid(child.proc, timeout=15)
                log.info("stopped", extra={"child": child.name, "returncode": child.proc.returncode})
        if self.clamd:
            self.clamd.stop()
        if self.broker:
            self.broker.stop()
        if self.storage:
            self.storage.stop()


def run_up(settings: Settings) -> int:
    setup_logging(settings.log_level)
    settings.tenants()  # a bad tenants file fails here, before anything starts
    if settings.worker_processes > settings.topic_partitions:
        print(f"postwarden up: POSTWARDEN_WORKER_PROCESSES={settings.worker_processes} is more than "
              f"POSTWARDEN_TOPIC_PARTITIONS={settings.topic_partitions}: the extra workers would get "
              "no partition", file=sys.stderr)
        return 2
    sup = Supervisor(settings)
    signal.signal(signal.SIGTERM, sup.request_stop)
    signal.signal(signal.SIGINT, sup.request_stop)
    return sup.run()
