"""Run Debian's clamd as a child process from a directory of its own.

Used by the tests and the one-machine profile. clamd refuses to start
without signatures; the caller passes the database files to write (tests use
the EICAR test signature), so no signature download is ever needed here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from postwarden.local_services import ServiceError, die_with_parent, free_port, stop_pid, wait_for_port

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURES = {
    # Body signature, matched anywhere in any file clamd extracts (MIME parts, archive members).
    "eicar.ndb": f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n",
}
# Files of a ClamAV database directory that hold signatures (freshclam's and hand-made).
DATABASE_SUFFIXES = (".cvd", ".cld", ".cud", ".ndb", ".hdb", ".hsb", ".mdb", ".msb", ".ldb",
                     ".cdb", ".fp", ".sfp", ".ign2", ".ftm", ".pdb", ".wdb", ".yar", ".yara")


def clamd_binary() -> Path:
    found = shutil.which("clamd") or ("/usr/sbin/clamd" if Path("/usr/sbin/clamd").exists() else None)
    if not found:
        raise ServiceError("clamd not installed (scripts/setup-clamav.sh installs it)")
    return Path(found)


@dataclass
class ClamdServer:
    workdir: Path
    signatures: dict[str, str] = field(default_factory=lambda: dict(EICAR_SIGNATURES))
    # A ClamAV database directory whose signature files are used beside ``signatures``.
    databases: Path | None = None
    port: int = field(default_factory=free_port)
    # Stop with the process that started it (see die_with_parent); `up` sets it.
    tied_to_parent: bool = False
    proc: subprocess.Popen | None = None
    scratch: Path | None = None

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "clamd.sock"

    @property
    def unix_address(self) -> str:
        return f"unix://{self.socket_path}"

    def _write_config(self) -> Path:
        db = self.workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        for stale in db.iterdir():
            stale.unlink()
        for name, text in self.signatures.items():
            (db / name).write_text(text)
        for found in self.database_files():
            (db / found.name).symlink_to(found)
        conf = self.workdir / "clamd.conf"
        conf.write_text("\n".join([
            "Foreground yes",
            f"DatabaseDirectory {db}",
            "TCPAddr 127.0.0.1",
            f"TCPSocket {self.port}",
            f"LocalSocket {self.socket_path}",
            f"LogFile {self.workdir / 'clamd.log'}",
            # clamd writes every stream and each MIME part it extracts to a file: on a
            # memory filesystem that costs half the CPU per scan it costs on disk.
            f"TemporaryDirectory {self._scratch_dir()}",
            # The daemon runs as whoever starts it; dropping to the clamav user
            # would lose access to this private directory.
            "User root" if _is_root() else "",
            "ScanMail yes",
            "ScanArchive yes",
            "StreamMaxLength 50M",
            "MaxThreads 4",
            "",
        ]))
        return conf

    def database_files(self) -> list[Path]:
        if self.databases is None or not self.databases.is_dir():
            return []
        return sorted(f for f in self.databases.iterdir()
                      if f.suffix in DATABASE_SUFFIXES and f.name not in self.signatures)

    def _scratch_dir(self) -> Path:
        if self.scratch is None:
            shm = Path("/dev/shm")
            base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.workdir
            self.scratch = Path(tempfile.mkdtemp(prefix="pw-clamd-", dir=base))
        return self.scratch

    def start(self, timeout: float = 30.0) -> ClamdServer:
        conf = self._write_config()
        self.proc = subprocess.Popen(
            [str(clamd_binary()), "--config-file", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=die_with_parent if self.tied_to_parent else None)
        try:
            wait_for_port("127.0.0.1", self.port, timeout, self.proc)
        except ServiceError as exc:
            self.stop()
            log = (self.workdir / "clamd.log")
            detail = log.read_text()[-2000:] if log.exists() else ""
            raise ServiceError(f"clamd did not start: {exc}\n{detail}") from exc
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


def _is_root() -> bool:
    return os.geteuid() == 0
