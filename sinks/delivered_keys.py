"""The delivered-log's keys, which the delivery sink checks before every attempt, on local disk.

The sink keeps one key per delivered or bounced recipient of its partitions
for the log's retention (14 days). As Python strings that grew with every
delivery (about 9-10 MB a minute at 170-250 deliveries a second). Here they
are in RocksDB files, one database per partition in the sink's state
directory (postwarden.state_dir: wiped when the sink starts); the log stays the
source of truth and is read again whenever a partition is assigned. Memory is
bounded by the write buffers and block cache set below.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable
from pathlib import Path

import rocksdict

from postwarden import state_dir

_PRESENT = b"1"


def _options() -> rocksdict.Options:
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(4 * 1024 * 1024)
    options.set_max_write_buffer_number(2)
    table = rocksdict.BlockBasedOptions()
    # Nearly every lookup is of a key that is not there (mail not delivered yet):
    # the filter answers those without reading a block.
    table.set_bloom_filter(10, block_based=False)
    table.set_block_cache(rocksdict.Cache(8 * 1024 * 1024))
    options.set_block_based_table_factory(table)
    return options


class DeliveredKeys:
    """A set of delivered-log keys ('message id|recipient') for one partition."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = state_dir.without_write_ahead_log(rocksdict.Rdict(str(path), options=_options()))

    def add(self, key: str) -> None:
        self._db.put(key.encode(), _PRESENT)

    def add_all(self, keys: Iterable[bytes]) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in keys:
            batch.put(key, _PRESENT)
        self._db.write(batch)

    def __contains__(self, key: str) -> bool:
        raw = key.encode()
        return self._db.key_may_exist(raw) and self._db.get(raw) is not None

    def remove(self) -> None:
        """Closes the database and deletes its files."""
        with contextlib.suppress(Exception):
            self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
