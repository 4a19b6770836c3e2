"""The windows stage alone: k-anonymity, histograms, families, closing and the replay rule."""

from __future__ import annotations

import dataclasses
import random

import pytest

from postwarden.records import StatsEvent, StatsWindow, Verdict
from streams.stats_events import anonymous_event, release_event, virus_family
from streams.stats_windows import OTHER, OVERFLOW, SUPPRESSED, PartitionWindows

T0 = 1_795_000_020.0  # mid-minute
M0 = int(T0 // 60 * 60)


def ev(t=T0, tenant="example", verdict="clean", action="deliver", category="none", size=1000,
       score=5.0, latency=40.0, family=None) -> StatsEvent:
    return StatsEvent(tenant=tenant, event_time=t, verdict=verdict, category=category, action=action,
                      size_bytes=size, spam_score=score, latency_ms=latency, virus_family=family)


def cells(w: StatsWindow) -> dict[tuple[str, str, str], int]:
    return {(v, c, a): n for v, c, a, n, *_ in w.cells}


def test_virus_family_keeps_only_the_family_word():
    assert virus_family("Eicar-Test-Signature") == "Eicar"
    assert virus_family("Win.Trojan.Emotet-6312345-0") == "Emotet"
    assert virus_family(None) is None
    # A local signature could name anything; nothing address- or IP-shaped passes.
    assert virus_family("Local.Phish.john@doe.example-1") == "other"
    assert virus_family("Sig.10.1.2.3-1") == "other"


def test_anonymous_event_has_no_personal_fields():
    v = Verdict(message_id="m1", tenant="example", recipient="ann@example.com",
                mail_from="bob@x.example", received_at=T0 - 0.25, size=2048, spam_score=12.0,
                category_scores={}, categories=[], virus="Eicar-Test-Signature", rules=[],
                scorer="placeholder", raw=b"Subject: secret")
    e = anonymous_event(v, "quarantine", T0)
    assert (e.verdict, e.virus_family, e.action, e.size_bytes) == ("virus", "Eicar", "quarantine", 2048)
    assert e.latency_ms == pytest.approx(250.0)
    encoded = e.encode()
    for personal in (b"ann@", b"bob@", b"m1", b"secret"):
        assert personal not in encoded
    assert StatsEvent.decode(encoded) == e


def test_release_event_shape():
    e = release_event("example", "spam", "spam", 5000, 80.0, quarantined_at=T0 - 3600, now=T0)
    assert e.action == "release" and e.latency_ms == pytest.approx(3_600_000)
    assert StatsEvent.decode(e.encode()) == e


def test_small_cells_are_merged_into_other_and_totals_stay_exact():
    pw = PartitionWindows(0, 60, grace=5, k=5)
    plan = [("clean", "deliver", "none")] * 7 + [("spam", "quarantine", "spam")] * 3 \
        + [("virus", "quarantine", "none")] * 2
    for i, (verdict, action, category) in enumerate(plan):
        fam = "Eicar" if verdict == "virus" else None
        assert pw.add(i, 1000, ev(verdict=verdict, action=action, category=category, family=fam))
    assert pw.close_due(wall_now=T0) == []  # still inside the window
    (w,) = pw.close_due(wall_now=M0 + 66)
    assert cells(w) == {("clean", "none", "deliver"): 7, (OTHER, OTHER, OTHER): 5}
    assert w.messages == 12 and w.k == 5 and w.window_start == M0
    assert w.virus_families == [[OTHER, 2]]  # Eicar seen twice < k
    assert sum(n for m, _, n in w.histograms if m == "size_bytes") == 12
    for metric, le, n in w.histograms:
        assert n >= 5 or le == SUPPRESSED


def test_histograms_bucket_and_exclude_release_latency():
    pw = PartitionWindows(0, 60, grace=0, k=1)
    pw.add(0, 1, ev(score=95.0, size=10**9, latency=70.0))
    pw.add(1, 1, ev(action="release", latency=9e6))
    (w,) = pw.close_due(wall_now=M0 + 60)
    hist = {(m, le): n for m, le, n in w.histograms if n}
    assert hist[("spam_score", 100)] == 1 and hist[("size_bytes", OVERFLOW)] == 1
    assert hist[("latency_ms", 100)] == 1
    assert sum(n for (m, _), n in hist.items() if m == "latency_ms") == 1


def test_event_time_closes_windows_and_late_events_are_dropped():
    pw = PartitionWindows(0, 60, grace=5, k=1)
    assert pw.add(0, 1, ev(t=M0 + 1))
    assert pw.add(1, 1, ev(t=M0 + 61, tenant="other-tenant"))
    assert pw.close_due() == []  # watermark M0+61 is inside grace of window M0
    assert pw.add(2, 1, ev(t=M0 + 66))
    (w,) = pw.close_due()
    assert w.window_start == M0
    assert not pw.add(3, 1, ev(t=M0 + 30))  # its window was emitted already


def test_a_replayed_decision_counts_once_even_in_a_later_window():
    """A worker killed after routing replays its decisions with a new routing time."""
    from streams.stats_events import event_id
    from streams.stats_windows import DEDUPE_SECONDS

    pw = PartitionWindows(0, 60, grace=1, k=1)
    first = dataclasses.replace(ev(t=M0 + 10), event_id=event_id("m1", "ann@example.com", "deliver"))
    assert pw.add(0, 1, first)
    assert pw.add(1, 1, dataclasses.replace(first, event_time=M0 + 70))  # the replay
    assert pw.add(2, 1, dataclasses.replace(first, event_id=event_id("m1", "bo@example.com", "deliver"),
                                            event_time=M0 + 71))
    assert pw.add(3, 1, ev(t=M0 + 200))
    windows = {w.window_start: sum(cells(w).values()) for w in pw.close_due()}
    assert windows == {M0: 1, M0 + 60: 1}  # the replay at M0+70 was not counted again
    # Ids are forgotten once they are older than the horizon, so memory stays bounded.
    assert pw.add(4, 1, ev(t=M0 + 200 + DEDUPE_SECONDS + 60))
    pw.close_due()
    assert pw.seen == {}


RESUMED: list[int] = []


def _run(events, k=3, crash_at=None):
    """Feeds (offset, event) pairs; on crash, restarts from the last commit. Returns
    the rows a ReplacingMergeTree keeps: per key the highest version."""
    kept: dict[tuple, tuple[int, int]] = {}

    def store(windows):
        for w in windows:
            for v, c, a, n, *_ in w.cells:
                key = (w.tenant, w.window_start, w.source_epoch, v, c, a)
                if key not in kept or kept[key][0] <= w.messages:
                    kept[key] = (w.messages, n)

    pw = PartitionWindows(0, 60, grace=5, k=k)
    offset = 0
    crashed = False
    while offset < len(events):
        t, e = events[offset]
        pw.add(offset, int(t), e)
        store(pw.close_due())
        offset += 1
        if crash_at is not None and offset == crash_at and not crashed:
            crashed = True
            offset = pw.committable or 0
            RESUMED.append(offset)
            pw = PartitionWindows(0, 60, grace=5, k=k)
    store(pw.close_due(wall_now=events[-1][1].event_time + 3600))
    return {key: n for key, (_, n) in kept.items()}


def test_a_crash_anywhere_replays_to_the_same_totals():
    rng = random.Random(7)
    events = []
    t = float(M0)
    for i in range(400):
        t += rng.uniform(0, 1.5)
        jitter = rng.uniform(-2, 0)  # a little out of order, as from several producers
        events.append((t * 1000, ev(t=t + jitter, tenant=rng.choice("ab"),
                                    verdict=rng.choice(["clean", "clean", "spam"]))))
    reference = _run(events)
    assert sum(reference.values()) == 400
    for crash_at in range(1, 400, 7):
        assert _run(events, crash_at=crash_at) == reference, crash_at
    # The commit point moved with the windows: most restarts skipped what was emitted.
    assert sum(1 for o in RESUMED if o > 0) > len(RESUMED) // 2


def test_events_from_before_the_family_field_still_decode():
    import msgpack

    old = {"tenant": "example", "event_time": T0, "verdict": "clean", "category": "none",
           "action": "deliver", "size_bytes": 10, "spam_score": 0.0, "latency_ms": 1.0, "v": 1}
    assert StatsEvent.decode(msgpack.packb(old)).virus_family is None
