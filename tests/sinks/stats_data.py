"""An hour of mail for two tenants, through the windows stage into a store (pipeline code, no processes)."""

from __future__ import annotations

import random

from postwarden.records import StatsEvent
from sinks.stats_store import WindowRows
from streams.stats_windows import PartitionWindows


def fill(store, now: int, events: int = 6000, k: int = 5) -> None:
    rng = random.Random(11)
    pw = PartitionWindows(0, 60, grace=0, k=k)
    start = now - 3600
    for offset in range(events):
        t = start + offset * (3600 / events)
        verdict = rng.choice(["clean"] * 6 + ["spam"] * 3 + ["virus"])
        action = "deliver" if verdict == "clean" else rng.choice(["quarantine"] * 4 + ["release"])
        pw.add(offset, int(t * 1000), StatsEvent(
            tenant=rng.choice(["example", "acme"]), event_time=t, verdict=verdict,
            category=verdict if verdict == "spam" else "none", action=action,
            size_bytes=rng.randint(500, 200_000), spam_score=rng.uniform(0, 100),
            latency_ms=rng.uniform(5, 3000), virus_family="Eicar" if verdict == "virus" else None))
    rows = WindowRows()
    for w in pw.close_due(wall_now=now + 60):
        rows.add(w)
    store.write(rows)
