"""Where a worker keeps its tables: on local disk (RocksDB), with the in-memory store's rules.

Held mail lives in the worker's tables for the whole retention period. In
memory that was about 8 KB per held message, so a worker grew with its
partitions' quarantine until its memory limit restarted it, and the restart
re-read the same changelogs into the same memory. Here the values are in
RocksDB files and memory is bounded by the write buffers and block cache set
below, whatever the quarantine holds.

The changelog topics stay the only source of truth, exactly as with the memory
store: a table's files are wiped when the worker starts (postwarden.state_dir), a partition is
recovered from the start of its changelog whenever it is assigned (no offset
is trusted from disk, so nothing a crash left half-written or a compaction
left stale is read), and after each recovery the files of partitions this
worker no longer owns are deleted. Faust's own RocksDB store trusts the
offset it wrote to disk: a partition coming back after its tombstones were
compacted away would keep deleted entries.
"""

from __future__ import annotations

import contextlib
import shutil
from typing import Any

from faust import stores
from faust.stores import rocksdb
from faust.types import TP

from postwarden import state_dir

SCHEME = "postwarden-disk"

# Per table and partition (RocksDB's defaults are 64 MB x 3 memtables and a 2 GB cache).
OPTIONS: dict[str, Any] = {
    "driver": "rocksdict",
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 * 1024 * 1024,
    "max_open_files": 256,
}



class Store(rocksdb.Store):
    def _get(self, key: bytes) -> bytes | None:
        # Faust's store reads only the partition of the event being processed; the
        # score agent routes in place, reading users of other partitions than its
        # message's (the memory store holds every partition in one dict).
        found = self._get_bucket_for_key(key)
        return None if found is None else found.value

    def _contains(self, key: bytes) -> bool:
        return self._get_bucket_for_key(key) is not None

    def _open_for_partition(self, partition: int) -> Any:
        return state_dir.without_write_ahead_log(super()._open_for_partition(partition))

    def persisted_offset(self, tp: TP) -> int | None:
        # Always recover from the changelog's start, as the memory store does.
        return None

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        pass  # never read: one write less per table change

    def revoke_partitions(self, table: Any, tps: set[TP]) -> None:
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                self._drop(tp.partition)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        # As the memory store does: what is left of partitions that are not active
        # (standby copies included) is dropped, and read again in full if they come back.
        await super().on_recovery_completed(active_tps, standby_tps)
        active = {tp.partition for tp in active_tps if tp.topic in self.table.changelog_topic.topics}
        for partition in [p for p in self._dbs if p not in active]:
            self._drop(partition)

    def _drop(self, partition: int) -> None:
        db = self._dbs.pop(partition, None)
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()
            del db
        self._key_index.clear()
        shutil.rmtree(self.partition_path(partition), ignore_errors=True)


def register() -> None:
    """Makes ``postwarden-disk:`` a table store URL."""
    stores.STORES.aliases[SCHEME] = f"{__name__}:Store"


def url(table: str) -> str:
    # A relative path: the files go under the tabledir, named for the table.
    return f"{SCHEME}:{table}"


def table_options() -> dict[str, Any]:
    # Faust's store pops "driver" from the mapping it is given: one copy per table.
    return dict(OPTIONS)
