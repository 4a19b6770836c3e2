from datetime import datetime, timezone

import pytest

from postwarden.records import StatsEvent
from sinks.stats_sink import ChunkAggregator
from sinks.stats_store import ServerStatsStore, StoreError
from postwarden.local_services import free_port

T0 = 1_795_000_020.0  # a fixed instant, mid-minute


def event(tenant="example", verdict="clean", action="deliver", t=T0, size=1000, latency=20.0):
    return StatsEvent(tenant=tenant, event_time=t, verdict=verdict, category="none", action=action,
                      size_bytes=size, spam_score=10.0, latency_ms=latency)


def totals(store):
    return {(t, v, a): int(n) for t, v, a, n in store.query(
        "SELECT tenant, verdict, action, sum(messages) FROM postwarden.mail_stats "
        "GROUP BY tenant, verdict, action")}


def test_migrate_is_idempotent_and_version_gated(store):
    statements = store.migrate()
    assert any("ReplacingMergeTree(version)" in s for s in statements)
    has_ttl = any(" TTL " in s for s in statements)
    assert has_ttl == (store.server_version() >= (19, 6))


def test_rows_sum_per_minute_and_replays_do_not_double(store):
    agg = ChunkAggregator(chunk_offsets=100)
    for offset in range(30):
        agg.add(0, offset, 1000, event(verdict="spam" if offset % 3 == 0 else "clean",
                                 action="quarantine" if offset % 3 == 0 else "deliver"))
    for offset in range(7):
        agg.add(1, offset, 2000, event(tenant="other", t=T0 + 60))
    rows = agg.rows()
    store.insert(rows)
    store.insert(rows)  # the same batch written again after a crash before commit
    assert totals(store) == {("example", "clean", "deliver"): 20, ("example", "spam", "quarantine"): 10,
                             ("other", "clean", "deliver"): 7}
    minutes = store.query("SELECT DISTINCT toUnixTimestamp(minute) AS m FROM postwarden.mail_stats ORDER BY m")
    assert [int(m[0]) for m in minutes] == [int(T0 // 60 * 60), int(T0 // 60 * 60) + 60]


def test_replay_from_chunk_start_replaces_partial_rows(store):
    """A sink that crashed mid-chunk re-reads from the chunk start and must end exact."""
    first = ChunkAggregator(chunk_offsets=100)
    for offset in range(40):
        first.add(0, offset, 1000, event())
    store.insert(first.rows())
    # Committed offset was the chunk start (0): the new process re-reads 0..59.
    second = ChunkAggregator(chunk_offsets=100)
    for offset in range(25):
        second.add(0, offset, 1000, event())
    store.insert(second.rows())  # lower version: must not replace the fuller row
    assert totals(store) == {("example", "clean", "deliver"): 40}
    for offset in range(25, 60):
        second.add(0, offset, 1000, event())
    store.insert(second.rows())
    assert totals(store) == {("example", "clean", "deliver"): 60}


def test_commit_offsets_stop_at_the_open_chunk():
    agg = ChunkAggregator(chunk_offsets=10)
    for offset in range(25):
        agg.add(0, offset, 1000, event())
    assert agg.flushed({0: 25}) == {0: 20}
    # chunks 0 and 1 are complete and dropped; chunk 2 stays open in memory
    assert list(agg.chunks) == [(0, 2)]
    assert agg.rows() == []  # nothing new since the flush
    for offset in range(25, 30):
        agg.add(0, offset, 1000, event())
    assert agg.flushed({0: 30}) == {0: 30}
    assert agg.chunks == {}


def test_unreachable_server_raises_store_error():
    store = ServerStatsStore(f"clickhouse://default:@127.0.0.1:{free_port()}/default", connect_timeout=1)
    with pytest.raises(StoreError, match="ClickHouse server"):
        store.migrate()


def test_string_values_are_escaped(store):
    agg = ChunkAggregator()
    agg.add(0, 0, 1000, event(tenant="o'brien\\x"))
    store.insert(agg.rows())
    assert totals(store) == {("o'brien\\x", "clean", "deliver"): 1}


def test_same_offsets_in_a_new_life_of_the_topic_add_up(store):
    """A recreated broker starts offsets at 0 again: its chunks must not replace the old ones."""
    for epoch in (1000, 5000):
        agg = ChunkAggregator(chunk_offsets=100)
        for offset in range(3):
            agg.add(0, offset, epoch, event())
        store.insert(agg.rows())
    assert totals(store) == {("example", "clean", "deliver"): 6}
