"""Worker tables on disk (streams.table_store): RocksDB files with the memory store's rules."""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from pathlib import Path

import faust
import pytest
from faust.streams import _current_event
from faust.types import TP, Message

from streams import table_store

table_store.register()


@pytest.fixture
def table(tmp_path: Path) -> faust.Table:
    app = faust.App("table-store-test", broker="kafka://127.0.0.1:1", store="memory://",
                    tabledir=str(tmp_path / "tables"), autodiscover=False)
    return app.Table("held", key_type=bytes, value_type=bytes, partitions=2,
                     store=table_store.url("held"), options=table_store.table_options())


def changelog(table: faust.Table, partition: int) -> TP:
    return TP(table.changelog_topic.get_topic_name(), partition)


def test_values_live_in_rocksdb_files_under_the_table_directory(table):
    store = table.data
    assert isinstance(store, table_store.Store)
    store._db_for_partition(1).put(b"alice@example.com", b"sealed")
    assert store.partition_path(1).is_dir()
    assert store.partition_path(1).parent == Path(table.app.conf.tabledir)


def test_a_key_is_found_whatever_partition_the_reader_is_processing(table):
    # The score agent routes in place: while processing a message of partition 1 it
    # reads users whose entries are in partition 0.
    store = table.data
    store._db_for_partition(0).put(b"bob@example.com", b"settings")
    store._db_for_partition(1)
    message = Message("mail.inbound", 1, 0, 0.0, 0, {}, b"k", b"v", None, tp=TP("mail.inbound", 1))
    event = faust.Event(table.app, b"k", b"v", {}, message)

    def read(key: bytes) -> tuple[bytes | None, bool]:
        _current_event.set(weakref.ref(event))
        return store._get(key), store._contains(key)

    assert contextvars.copy_context().run(read, b"bob@example.com") == (b"settings", True)
    assert contextvars.copy_context().run(read, b"nobody@example.com") == (None, False)


def test_offsets_on_disk_are_never_trusted(table):
    store = table.data
    store.set_persisted_offset(changelog(table, 0), 41)
    assert store.persisted_offset(changelog(table, 0)) is None


def test_a_revoked_partition_is_deleted_and_comes_back_empty(table):
    store = table.data
    store._db_for_partition(0).put(b"carol@example.com", b"held")
    store.revoke_partitions(table, {changelog(table, 0)})
    assert not store.partition_path(0).exists()
    assert store._get(b"carol@example.com") is None
    assert store._db_for_partition(0).get(b"carol@example.com") is None


def test_after_recovery_only_active_partitions_are_kept(table):
    # Standby copies included, as the memory store does: they are read again in full.
    store = table.data
    store._db_for_partition(0).put(b"dave@example.com", b"held")
    store._db_for_partition(1).put(b"erin@example.com", b"held")
    asyncio.run(store.on_recovery_completed({changelog(table, 1)}, {changelog(table, 0)}))
    assert not store.partition_path(0).exists() and store.partition_path(1).is_dir()
    assert store._get(b"dave@example.com") is None and store._get(b"erin@example.com") == b"held"
