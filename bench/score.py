"""Scoring speed on the corpus through the real code (parse + rules + model).

    python bench/score.py [--limit N] [--clamd]

Reads the messages listed in train.tsv (the held-out messages are not read),
scores each one with ScoringEngine.score_sync and prints messages/s, CPU ms
per message (median, mean, p99, and the median over messages of median size)
and peak memory. ClamAV is measured separately with --clamd: a private clamd
is started and INSTREAM round trips are timed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams import training  # noqa: E402
from streams.scoring_engine import ScoringEngine  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_engine(raws: list[bytes]) -> None:
    engine = ScoringEngine()
    for raw in raws[:200]:  # warm caches (hash cache, regexes) as a running worker would have them
        engine.score_sync(raw)
    gc.collect()
    cpu: list[float] = []
    wall_start = time.perf_counter()
    for raw in raws:
        t = time.process_time_ns()
        engine.score_sync(raw)
        cpu.append((time.process_time_ns() - t) / 1e6)
    wall = time.perf_counter() - wall_start
    sizes = sorted(len(r) for r in raws)
    lo, hi = sizes[int(0.4 * len(sizes))], sizes[int(0.6 * len(sizes))]
    median_band = [c for c, r in zip(cpu, raws) if lo <= len(r) <= hi]
    print(f"messages: {len(raws)}, median size {statistics.median(sizes) / 1024:.1f} KiB")
    print(f"throughput: {len(raws) / wall:.0f} messages/s (one core, parse + rules + model)")
    print(f"CPU ms per message: median {statistics.median(cpu):.3f}, mean {statistics.fmean(cpu):.3f}, "
          f"p99 {percentile(cpu, 0.99):.3f}")
    print(f"CPU ms per median-size message ({lo}-{hi} bytes, n={len(median_band)}): "
          f"median {statistics.median(median_band):.3f}")
    print(f"peak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def bench_clamd(raws: list[bytes]) -> None:
    from streams.clamd_service import ClamdServer
    from streams.virus_scanner import ClamdAddress, ClamdScanner

    with tempfile.TemporaryDirectory() as tmp:
        server = ClamdServer(Path(tmp)).start()
        try:
            scanner = ClamdScanner(ClamdAddress.parse(server.address))

            async def run() -> list[float]:
                out = []
                for raw in raws:
                    t = time.perf_counter()
                    result = await scanner.scan(raw)
                    out.append((time.perf_counter() - t) * 1000)
                    if result.status == "error":
                        raise SystemExit(f"clamd error: {result.error}")
                return out

            latency = asyncio.run(run())
        finally:
            server.stop()
    print(f"ClamAV INSTREAM (separate, EICAR-only signature db, {len(raws)} messages): "
          f"median {statistics.median(latency):.2f} ms, p99 {percentile(latency, 0.99):.2f} ms wall per message")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="score only the first N messages")
    parser.add_argument("--clamd", action="store_true", help="also time ClamAV INSTREAM scans")
    parser.add_argument("--manifest", type=Path, default=None)
    parser.add_argument("--corpus", type=Path, default=None)
    args = parser.parse_args()
    examples = training.load_examples(args.manifest or training.default_manifest(),
                                      args.corpus or training.default_corpus())
    raws = [e.raw for e in examples][: args.limit or None]
    bench_engine(raws)
    if args.clamd:
        bench_clamd(raws[:500])
    return 0


if __name__ == "__main__":
    sys.exit(main())
