"""The spam model's cross-validated figures over several partitions of train.tsv.

    python bench/model_cv.py [--partitions N] [--start S] [--processes P] [--folds K]

`postwarden train` reports one partition of train.tsv into 5 folds. At a 0.1% ham
budget that is 3 of its 3,139 ham, so which messages share a fold moves the
spam caught by up to 2%. This runs the same cross-validation (pooled and
nested cuts) over N partitions (the first is the one `postwarden train`
uses; `--start 8` runs p8 onwards instead, to check a change on partitions
it was not chosen on) and prints each, their mean and their range: judge a
change to the features or the training by the mean, not by one partition.
With more folds each fold's models train on more of the corpus, as the
shipped model does on all of it (10 folds: about 4x the time).

Reads only the messages listed in train.tsv, as training does.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams import spam_model, training  # noqa: E402
from streams.scoring_engine import rule_offset  # noqa: E402

_data: training.TrainingSet | None = None  # set before the pool forks


def _partition(task: tuple[str, int]) -> tuple[str, list[training.OperatingPoint], float]:
    assert _data is not None
    salt, n_folds = task
    started = time.monotonic()
    _, _, points = training.cross_validate(_data, training.folds(_data, salt, n_folds), log=lambda line: None)
    return salt, points, time.monotonic() - started


def main() -> int:
    global _data
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--start", type=int, default=0,
                        help="index of the first partition (0: postwarden train's)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--folds", type=int, default=training.FOLDS)
    args = parser.parse_args()
    errors = training.argument_errors(args.folds, args.processes)
    if args.partitions < 1:
        errors.append(f"--partitions must be at least 1, not {args.partitions}")
    if args.start < 0:
        errors.append(f"--start must be at least 0, not {args.start}")
    if errors:
        parser.error("; ".join(errors))
    started = time.monotonic()
    examples = training.load_examples(training.default_manifest(), training.default_corpus())
    _data = training.prepare(examples, rule_offset)
    print(f"{len(examples)} messages ({int(_data.rows.y.sum())} spam), {args.folds} folds, features in "
          f"{time.monotonic() - started:.0f} s")
    salts = [spam_model.SHIPPED_FOLDS if i == 0 else f"p{i}"
             for i in range(args.start, args.start + args.partitions)]
    with get_context("fork").Pool(args.processes) as pool:
        results = pool.map(_partition, [(salt, args.folds) for salt in salts])
    print("partition  ham budget  pooled cut: spam (ham)     nested cut: spam (ham)    time")
    for salt, points, seconds in results:
        for op in points:
            print(f"{salt:9s}  {op.budget:9.1%}   {op.pooled_caught:7.2%} ({op.pooled_flagged:.2%})"
                  f"          {op.nested_caught:7.2%} ({op.nested_flagged:.2%})      {seconds:.0f} s")
    print(f"over {len(salts)} partitions: mean [min - max]")
    for i, budget in enumerate(training.REPORTED_FPRS):
        cols = []
        for attr in ("pooled_caught", "pooled_flagged", "nested_caught", "nested_flagged"):
            v = np.array([getattr(pts[i], attr) for _, pts, _ in results])
            cols.append(f"{attr.replace('_', ' ')} {v.mean():.2%} [{v.min():.2%} - {v.max():.2%}]")
        print(f"  ham budget {budget:.1%}: " + "; ".join(cols))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"wall {time.monotonic() - started:.0f} s; peak RSS {peak:.0f} MiB (main), "
          f"{peak_child:.0f} MiB (largest partition process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
