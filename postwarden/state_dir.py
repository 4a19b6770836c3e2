"""Scratch directories for a process's local state, one per running process.

Several processes of one kind can share a data directory (``postwarden up``
with POSTWARDEN_WORKER_PROCESSES, tests): each takes the first slot no running
process holds. A slot is wiped when it is taken, so what is in it never
outlives the process that wrote it; the lock dies with the process, so a
killed process's slot is taken again by the next one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

import rocksdict

log = logging.getLogger(__name__)

MAX_SLOTS = 64
# Descriptors of the claimed slots' lock files: open, so locked, until the process ends.
_held: list[int] = []


class SlotTaken(RuntimeError):
    pass


def claim(base: Path) -> Path:
    """An empty directory under ``base``, locked for as long as this process runs."""
    base.mkdir(parents=True, exist_ok=True)
    for slot in range(MAX_SLOTS):
        fd = os.open(base / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held.append(fd)
        path = base / f"slot-{slot}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700)
        log.info("state directory claimed", extra={"slot": slot})
        return path
    raise SlotTaken(f"all {MAX_SLOTS} state directories under {base} are held by running processes")


def without_write_ahead_log(db: rocksdict.Rdict) -> rocksdict.Rdict:
    """A RocksDB database in a state directory needs no write-ahead log: its files
    never outlive the process that wrote them."""
    options = rocksdict.WriteOptions()
    options.disable_wal = True
    db.set_write_options(options)
    return db
