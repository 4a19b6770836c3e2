"""The spam model's cross-validated figures over several partitions of train.tsv.

    python bench/model_cv.py [--partitions N] [--start S] [--processes P] [--folds K] [--scores DIR]

`postwarden train` reports one partition of train.tsv into 5 folds. At a 0.1% ham
budget that is 3 of its 3,139 ham, so which messages share a fold moves the
spam caught by up to 2%. This runs the same cross-validation (pooled and
nested cuts) over N partitions (the first is the one `postwarden train`
uses; `--start 8` runs p8 onwards instead, to check a change on partitions
it was not chosen on) and prints each, their mean and their range: judge a
change to the features or the training by the mean, not by one partition.
With more folds each fold's models train on more of the corpus, as the
shipped model does on all of it (10 folds: about 4x the time).

Almost all of the time goes to fitting the token models (regression and
Bayes). With `--scores DIR` each partition's token scores are kept in DIR (made
if missing) and reused while the token models' inputs, settings and code are
unchanged, so a change to the second stage alone is measured in seconds, not
minutes.

Reads only the messages listed in train.tsv, as training does.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
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


def _token_models_key(rows: training.Rows, fold: np.ndarray) -> str:
    """Changes whenever the token scores of this partition could: their inputs,
    the settings they are fitted with, or the code that fits them."""
    digest = hashlib.sha256()
    matrices = [rows.tok.x, *rows.tok.groups, rows.tok.with_grams, rows.tok.grams]
    for array in [fold, rows.y, rows.offset, rows.weight,
                  *(a for m in matrices for a in (m.indptr, m.indices, m.values))]:
        digest.update(np.ascontiguousarray(array).tobytes())
    settings = (training.ITERATIONS, training.L2, training.NB_ALPHA, spam_model.NB_GROUPS, spam_model.DIM)
    digest.update(repr(settings).encode())
    for code in (training.token_scores, training._inner_scores, training._out_of_fold, training._fold_scores,
                 spam_model.fit, spam_model.fit_nb, spam_model.Matrix):
        digest.update(inspect.getsource(code).encode())
    return digest.hexdigest()[:16]


def _save(scores: training.FoldScores, path: Path) -> None:
    arrays = {"fold": scores.fold, "lr": scores.outer.lr, "nb": scores.outer.nb}
    for i, inner in enumerate(scores.inner):
        arrays |= {f"inner{i}_lr": inner.lr, f"inner{i}_nb": inner.nb}
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    with open(partial, "wb") as f:
        np.savez(f, **arrays)
    partial.replace(path)  # a run stopped halfway leaves no truncated file behind


def _load(path: Path) -> training.FoldScores:
    with np.load(path) as z:
        n = len(np.unique(z["fold"]))
        return training.FoldScores(z["fold"], training.TokenScores(z["lr"], z["nb"]),
                                   [training.TokenScores(z[f"inner{i}_lr"], z[f"inner{i}_nb"]) for i in range(n)])


def _partition(task: tuple[str, int, Path | None]) -> tuple[str, list[training.OperatingPoint], float, bool]:
    assert _data is not None
    salt, n_folds, scores_dir = task
    started = time.monotonic()
    fold = training.folds(_data, salt, n_folds)
    path = None
    if scores_dir is not None:
        path = scores_dir / f"{salt}-{n_folds}-{_token_models_key(_data.rows, fold)}.npz"
    if path is not None and path.exists():
        scores, reused = _load(path), True
    else:
        scores, reused = training.token_scores(_data.rows, fold, log=lambda line: None), False
        if path is not None:
            _save(scores, path)
    _, points = training.stage_cv(_data.rows, scores)
    return salt, points, time.monotonic() - started, reused


def main() -> int:
    global _data
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--start", type=int, default=0,
                        help="index of the first partition (0: postwarden train's)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--folds", type=int, default=training.FOLDS)
    parser.add_argument("--scores", type=Path, metavar="DIR",
                        help="keep each partition's token scores here and reuse them while they are current")
    args = parser.parse_args()
    errors = training.argument_errors(args.folds, args.processes)
    if args.partitions < 1:
        errors.append(f"--partitions must be at least 1, not {args.partitions}")
    if args.start < 0:
        errors.append(f"--start must be at least 0, not {args.start}")
    if args.scores is not None and args.scores.exists() and not args.scores.is_dir():
        errors.append(f"--scores {args.scores} is not a directory")
    if not errors and args.scores is not None:
        try:
            args.scores.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            errors.append(f"--scores {args.scores}: cannot make the directory ({exc.strerror})")
    if errors:
        parser.error("; ".join(errors))
    # Progress reaches a log file line by line, not when the run ends.
    sys.stdout.reconfigure(line_buffering=True)
    started = time.monotonic()
    examples = training.load_examples(training.default_manifest(), training.default_corpus())
    _data = training.prepare(examples, rule_offset)
    print(f"{len(examples)} messages ({int(_data.rows.y.sum())} spam), {args.folds} folds, features in "
          f"{time.monotonic() - started:.0f} s")
    salts = [spam_model.SHIPPED_FOLDS if i == 0 else f"p{i}"
             for i in range(args.start, args.start + args.partitions)]
    print("partition  ham budget  pooled cut: spam (ham)     nested cut: spam (ham)    time")
    results = []
    with get_context("fork").Pool(args.processes) as pool:
        # Each partition's lines as soon as it is done: a run takes many minutes.
        for result in pool.imap(_partition, [(salt, args.folds, args.scores) for salt in salts]):
            results.append(result)
            salt, points, seconds, _ = result
            for op in points:
                print(f"{salt:9s}  {op.budget:9.1%}   {op.pooled_caught:7.2%} ({op.pooled_flagged:.2%})"
                      f"          {op.nested_caught:7.2%} ({op.nested_flagged:.2%})      {seconds:.0f} s")
    print(f"over {len(salts)} partitions: mean [min - max]")
    for i, budget in enumerate(training.REPORTED_FPRS):
        cols = []
        for attr in ("pooled_caught", "pooled_flagged", "nested_caught", "nested_flagged"):
            v = np.array([getattr(pts[i], attr) for _, pts, _, _ in results])
            cols.append(f"{attr.replace('_', ' ')} {v.mean():.2%} [{v.min():.2%} - {v.max():.2%}]")
        print(f"  ham budget {budget:.1%}: " + "; ".join(cols))
    if args.scores is not None:
        reused = sum(r[3] for r in results)
        print(f"token scores: {reused} of {len(results)} partitions reused from {args.scores}, "
              f"{len(results) - reused} fitted and kept there")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"wall {time.monotonic() - started:.0f} s; peak RSS {peak:.0f} MiB (main), "
          f"{peak_child:.0f} MiB (largest partition process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
