import pytest

from postwarden.local_services import free_port
from postwarden.records import StatsEvent
from sinks.stats_store import MIGRATIONS, ServerStatsStore, StoreError, WindowRows
from streams.stats_windows import PartitionWindows

T0 = 1_795_000_020.0  # a fixed instant, mid-minute
M0 = int(T0 // 60 * 60)


def event(tenant="example", verdict="clean", action="deliver", t=T0, family=None):
    return StatsEvent(tenant=tenant, event_time=t, verdict=verdict, category="none", action=action,
                      size_bytes=1000, spam_score=10.0, latency_ms=20.0, virus_family=family)


def windows(events, k=1, epoch=1000, partition=0):
    pw = PartitionWindows(partition, 60, grace=0, k=k)
    for offset, e in enumerate(events):
        pw.add(offset, epoch, e)
    return pw.close_due(wall_now=T0 + 3600)


def write(store, ws):
    rows = WindowRows()
    for w in ws:
        rows.add(w)
    store.write(rows)


def totals(store):
    return {(t, v, a): int(n) for t, v, a, n in store.query(
        "SELECT tenant, verdict, action, sum(messages) FROM postwarden.mail_stats "
        "GROUP BY tenant, verdict, action")}


def test_migrations_are_recorded_idempotent_and_ttl_is_version_gated(store):
    assert store.applied_migrations() == [m[0] for m in MIGRATIONS]
    assert store.migrate() == []  # nothing left to apply
    tables = {r[0] for r in store.query("SELECT name FROM system.tables WHERE database = 'postwarden'")}
    assert {"stats_counts", "stats_histograms", "stats_virus_families", "mail_stats",
            "schema_migrations"} <= tables
    assert "mail_stats_minute" not in tables
    ddl = store.query("SELECT create_table_query FROM system.tables "
                      "WHERE database = 'postwarden' AND name = 'stats_counts'")[0][0]
    assert ("TTL" in ddl) == (store.server_version() >= (19, 6))
    assert "ReplacingMergeTree(version)" in ddl


def test_the_foundation_schema_is_migrated_and_its_unanonymized_table_dropped(store):
    store.query("DROP DATABASE postwarden")
    store.execute("CREATE DATABASE postwarden")
    store.execute("CREATE TABLE postwarden.mail_stats_minute (minute DateTime, tenant String, "
                  "messages UInt64) ENGINE = MergeTree ORDER BY minute")
    store.execute("CREATE VIEW postwarden.mail_stats AS SELECT * FROM postwarden.mail_stats_minute")
    ran = store.migrate()
    assert any("DROP TABLE IF EXISTS postwarden.mail_stats_minute" in s for s in ran)
    write(store, windows([event()]))
    assert totals(store) == {("example", "clean", "deliver"): 1}


def test_replayed_windows_do_not_double_and_fuller_replays_win(store):
    events = [event(verdict="spam" if i % 3 == 0 else "clean",
                    action="quarantine" if i % 3 == 0 else "deliver") for i in range(30)]
    events += [event(tenant="other", t=T0 + 60) for _ in range(7)]
    ws = windows(events, k=5)
    write(store, ws)
    write(store, ws)  # the same windows again, after a crash before the commit
    assert totals(store) == {("example", "clean", "deliver"): 20, ("example", "spam", "quarantine"): 10,
                             ("other", "clean", "deliver"): 7}
    # A replay that saw more of a window (late events within the replay) replaces it whole,
    # including a cell that was "other" before and is reported now; a thinner one never wins.
    thin = windows([event(), event(), event(verdict="spam", action="quarantine")], k=2)
    full = windows([event(), event(), event(verdict="spam", action="quarantine"),
                    event(verdict="spam", action="quarantine")], k=2)
    store.query("TRUNCATE TABLE postwarden.stats_counts")
    write(store, thin)
    write(store, full)
    write(store, thin)
    assert totals(store) == {("example", "clean", "deliver"): 2, ("example", "spam", "quarantine"): 2}


def test_histograms_and_families_are_stored(store):
    write(store, windows([event(verdict="virus", action="quarantine", family="Eicar")] * 6, k=5))
    fam = store.query("SELECT family, sum(messages) FROM postwarden.stats_virus_families FINAL "
                      "GROUP BY family ORDER BY family")
    assert [(f, int(n)) for f, n in fam] == [("Eicar", 6), ("other", 0)]
    hist = store.query("SELECT metric, le, sum(messages) FROM postwarden.stats_histograms FINAL "
                       "WHERE messages > 0 GROUP BY metric, le ORDER BY metric")
    assert [(m, float(le), int(n)) for m, le, n in hist] == [
        ("latency_ms", 50.0, 6), ("size_bytes", 4096.0, 6), ("spam_score", 10.0, 6)]


def test_unreachable_server_raises_store_error():
    store = ServerStatsStore(f"clickhouse://default:@127.0.0.1:{free_port()}/default", connect_timeout=1)
    with pytest.raises(StoreError, match="ClickHouse server"):
        store.migrate()


def test_string_values_are_escaped(store):
    write(store, windows([event(tenant="o'brien\\x")]))
    assert totals(store) == {("o'brien\\x", "clean", "deliver"): 1}


def test_same_window_in_a_new_life_of_the_topic_adds_up(store):
    """A recreated broker starts offsets at 0 again: its windows must not replace the old ones."""
    for epoch in (1000, 5000):
        write(store, windows([event()] * 3, epoch=epoch))
    assert totals(store) == {("example", "clean", "deliver"): 6}
