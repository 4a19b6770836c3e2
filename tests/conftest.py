"""Real services for the tests: a Tansu broker and a ClickHouse server, on loopback.

Each is started here and stopped by PID. If one cannot start the tests that
need it fail: a missing service is a broken setup, not a reason to skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwarden.local_services import ClickHouseServer, Tansu, free_port
from postwarden.topics import create_topics
from streams.clamd_service import ClamdServer

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    """clamd on a signature database the test writes (EICAR), never the system service."""
    server = ClamdServer(tmp_path_factory.mktemp("clamd")).start()
    yield server
    server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Tansu]:
    """A fresh broker per test: topics and offsets never leak between tests."""
    tansu = Tansu(log_path=tmp_path / "tansu.log").start()
    create_topics([tansu.bootstrap], partitions=2)
    yield tansu
    tansu.stop()


def service_env(tmp_path: Path, bootstrap: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWARDEN_")}
    env.update({
        "POSTWARDEN_BOOTSTRAP_SERVERS": bootstrap,
        "POSTWARDEN_TOPIC_PARTITIONS": "2",
        "POSTWARDEN_DATA_DIR": str(tmp_path / "data"),
        "POSTWARDEN_STATS_FLUSH_SECONDS": "0.5",
        "POSTWARDEN_PRODUCE_TIMEOUT": "3",
        "POSTWARDEN_LOG_LEVEL": "INFO",
    })
    env.update(extra)
    return env


class Process:
    """A `postwarden` subcommand as a child process, logging to a file, stopped by PID."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args, self.env, self.log_path = args, env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "postwarden.cli", *self.args],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=REPO, start_new_session=True)
        return self

    def stop(self, timeout: float = 15.0) -> int:
        from postwarden.local_services import stop_pid

        assert self.proc is not None
        stop_pid(self.proc, timeout)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_http_ok(url: str, timeout: float, proc: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited early:\n{proc.log()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    detail = proc.log()[-3000:] if proc else ""
    raise AssertionError(f"{url} not ready after {timeout}s ({last})\n{detail}")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    started: list[Process] = []

    def _spawn(args: list[str], env: dict[str, str], name: str) -> Process:
        p = Process(args, env, tmp_path / f"{name}.log").start()
        started.append(p)
        return p

    yield _spawn
    for p in reversed(started):
        if p.proc is not None and p.proc.poll() is None:
            p.stop()


@pytest.fixture
def ports() -> Iterator:
    yield free_port
