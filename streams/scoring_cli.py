"""`postwarden train` and `postwarden score`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from postwarden.records import Envelope
from streams import spam_model, training


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train the spam model on the corpus messages listed in train.tsv",
        description="Trains the statistical spam model reproducibly and prints cross-validated figures.")
    train.add_argument("--manifest", type=Path, default=None,
                       help="train.tsv (default: ../shared/corpus/train.tsv or $POSTWARDEN_CORPUS_MANIFEST)")
    train.add_argument("--corpus", type=Path, default=None,
                       help="corpus data folder (default: .cache/corpus/... from scripts/get-corpus.sh)")
    train.add_argument("--out", type=Path, default=None,
                       help=f"artifact to write (default: the packaged streams/{spam_model.ARTIFACT})")
    train.add_argument("--folds", type=int, default=training.FOLDS,
                       help=f"cross-validation folds (default {training.FOLDS}); more folds train each fold's "
                            "models on more of the corpus, closer to the shipped model, and take longer")
    train.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                       help="worker processes fitting the cross-validation folds (default: one per CPU); "
                            "the artifact is the same for any number")
    train.set_defaults(func=run_train)

    score = subparsers.add_parser(
        "score", help="score raw messages offline, one JSON line per message",
        description="Scores files (or every file under directories) through the scoring engine. "
                    "Virus scanning and DNS checks run only when POSTWARDEN_CLAMD_ADDRESS and "
                    "POSTWARDEN_DNS_SERVERS are set.")
    score.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_DIR")
    score.set_defaults(func=run_score)


def run_train(args: argparse.Namespace) -> int:
    from streams.scoring_engine import rule_offset

    manifest = args.manifest or training.default_manifest()
    corpus = args.corpus or training.default_corpus()
    out = args.out or training.shipped_artifact_path()
    errors = training.argument_errors(args.folds, args.processes)
    if errors:
        print(f"postwarden train: {'; '.join(errors)}", file=sys.stderr)
        return 2
    for what, path in (("manifest", manifest), ("corpus", corpus)):
        if not path.exists():
            print(f"postwarden train: {what} not found at {path}", file=sys.stderr)
            return 2
    _, report = training.run_training(manifest, corpus, out, rule_offset, processes=args.processes,
                                        n_folds=args.folds)
    print("\n".join(report.lines()))
    return 0


def _files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def run_score(args: argparse.Namespace) -> int:
    from streams.scoring_engine import ScoringEngine

    from postwarden.config import load_settings

    engine = ScoringEngine.from_settings(load_settings())
    networked = engine.scanner is not None or engine.resolver is not None
    status = 0
    loop = asyncio.new_event_loop() if networked else None
    try:
        for path in _files(args.paths):
            try:
                raw = path.read_bytes()
            except OSError as exc:
                print(f"postwarden score: {path}: {exc.strerror}", file=sys.stderr)
                status = 1
                continue
            if loop is not None:
                envelope = Envelope(message_id=path.name, tenant="offline", mail_from="",
                                    rcpt_tos=[], client_ip="", helo="", tls=False,
                                    received_at=time.time(), size=len(raw), ingest_node="cli")
                result = loop.run_until_complete(engine.score(raw, envelope))
            else:
                result = engine.score_sync(raw)
            print(json.dumps({
                "file": str(path),
                "spam_score": result.spam_score,
                "is_spam": "spam" in result.categories,
                "virus": result.virus,
                "categories": result.categories,
                "rules": [{"name": h.name, "score": h.score} for h in result.rules],
            }), flush=True)
    finally:
        if loop is not None:
            loop.close()
    return status
