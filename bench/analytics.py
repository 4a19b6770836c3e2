"""Analytics throughput: events/s through the windows stage, rows/s into each ClickHouse backend.

    python bench/analytics.py [--events 200000] [--tenants 50]

Events are decoded from their wire form and aggregated exactly as the stats
windows stage does (k-anonymity included); the closed windows are then turned
into rows and written in batches to embedded chdb and to a local ClickHouse
server (Debian's clickhouse-server, started here and stopped by PID).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from postwarden.local_services import ClickHouseServer  # noqa: E402
from postwarden.records import StatsEvent  # noqa: E402
from sinks.stats_store import EmbeddedStatsStore, ServerStatsStore, WindowRows  # noqa: E402
from streams.stats_windows import PartitionWindows  # noqa: E402


def make_events(n: int, tenants: int, minutes: int) -> list[bytes]:
    rng = random.Random(1)
    start = time.time() - minutes * 60
    out = []
    for i in range(n):
        verdict = rng.choice(["clean"] * 6 + ["spam"] * 3 + ["virus"])
        out.append(StatsEvent(
            tenant=f"tenant{rng.randrange(tenants)}", event_time=start + i * minutes * 60 / n,
            verdict=verdict, category="spam" if verdict == "spam" else "none",
            action="deliver" if verdict == "clean" else "quarantine",
            size_bytes=rng.randint(500, 500_000), spam_score=rng.uniform(0, 100),
            latency_ms=rng.uniform(5, 2000), virus_family="Eicar" if verdict == "virus" else None,
        ).encode())
    return out


def bench_windows(payloads: list[bytes], k: int) -> tuple[float, WindowRows, int]:
    pw = PartitionWindows(0, 60, grace=10, k=k)
    t0 = time.perf_counter()
    for offset, payload in enumerate(payloads):
        pw.add(offset, 0, StatsEvent.decode(payload))
    windows = pw.close_due(wall_now=time.time() + 3600)
    rows = WindowRows()
    for w in windows:
        rows.add(w)
    return time.perf_counter() - t0, rows, len(windows)


def bench_store(store, rows: WindowRows) -> float:
    store.migrate()
    t0 = time.perf_counter()
    store.write(rows)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--minutes", type=int, default=120)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()

    payloads = make_events(args.events, args.tenants, args.minutes)
    seconds, rows, windows = bench_windows(payloads, args.k)
    print(f"windows stage: {args.events} events in {seconds:.2f} s = {args.events / seconds:,.0f} events/s "
          f"({windows} tenant-windows, {len(rows)} rows; {args.tenants} tenants, {args.minutes} min)")
    with tempfile.TemporaryDirectory() as tmp:
        chdb = EmbeddedStatsStore(Path(tmp) / "chdb")
        try:
            s = bench_store(chdb, rows)
            print(f"chdb: {len(rows)} rows in {s:.2f} s = {len(rows) / s:,.0f} rows/s")
        finally:
            chdb.close()
        server = ClickHouseServer(Path(tmp) / "server").start()
        try:
            store = ServerStatsStore(server.url)
            s = bench_store(store, rows)
            version = ".".join(map(str, store.server_version()))
            print(f"clickhouse-server {version}: {len(rows)} rows in {s:.2f} s = {len(rows) / s:,.0f} rows/s")
            store.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
