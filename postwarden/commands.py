"""Core subcommands: topics, ingest, worker, sinks, clickhouse, up, send, stats."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import smtplib
import sys
import urllib.request
from pathlib import Path

from postwarden.config import load_settings
from postwarden.logs import setup_logging


def register(sub: argparse._SubParsersAction) -> None:
    topics = sub.add_parser("topics", help="manage Kafka topics")
    tsub = topics.add_subparsers(dest="topics_command", required=True)
    create = tsub.add_parser("create", help="create every declared topic that is missing (idempotent)")
    create.add_argument("--timeout", type=float, default=30.0)
    create.set_defaults(func=cmd_topics_create)
    tsub.add_parser("list", help="show the declared topics").set_defaults(func=cmd_topics_list)

    sub.add_parser("ingest", help="run an SMTP ingest node").set_defaults(func=cmd_ingest)
    sub.add_parser("worker", help="run a Faust worker (score and policy agents)").set_defaults(
        func=cmd_worker)

    sink = sub.add_parser("sink", help="run a sink")
    ssub = sink.add_subparsers(dest="sink", required=True)
    ssub.add_parser("stats", help="aggregate mail.events into ClickHouse").set_defaults(
        func=cmd_sink_stats)

    ch = sub.add_parser("clickhouse", help="ClickHouse schema")
    csub = ch.add_subparsers(dest="ch_command", required=True)
    csub.add_parser("migrate", help="create or migrate the analytics schema").set_defaults(
        func=cmd_clickhouse_migrate)

    keys = sub.add_parser("keys", help="master keys (see postwarden.keyring)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    ksub.add_parser("rotate", help="add a new current master key; older keys stay readable").set_defaults(
        func=cmd_keys_rotate)

    up = sub.add_parser("up", help="run everything on this machine (starts a local broker if none is configured)")
    up.set_defaults(func=cmd_up)

    send = sub.add_parser("send", help="submit a message file by SMTP")
    send.add_argument("file", type=Path)
    send.add_argument("--to", action="append", required=True, metavar="ADDRESS")
    send.add_argument("--from", dest="sender", default="sender@example.org")
    send.add_argument("--server", default=None, help="host:port (default: POSTWARDEN_SMTP_HOST:PORT)")
    send.set_defaults(func=cmd_send)

    stats = sub.add_parser("stats", help="show message counts from ClickHouse")
    stats.add_argument("--minutes", type=int, default=1440)
    stats.set_defaults(func=cmd_stats)


def cmd_topics_create(args: argparse.Namespace) -> int:
    from postwarden.topics import create_topics

    settings = load_settings()
    if not settings.bootstrap_list:
        print("postwarden: POSTWARDEN_BOOTSTRAP_SERVERS is not set", file=sys.stderr)
        return 2
    try:
        result = create_topics(settings.bootstrap_list, settings.topic_partitions,
                               settings.replication_factor, args.timeout)
    except Exception as exc:  # kafka-python raises a wide family; say what failed
        print(f"postwarden: cannot create topics: {exc}", file=sys.stderr)
        return 1
    for name, status in result.items():
        print(f"{name}: {status}")
    return 0


def cmd_topics_list(args: argparse.Namespace) -> int:
    from postwarden.topics import ALL_TOPICS

    partitions = load_settings().topic_partitions
    for t in ALL_TOPICS:
        print(f"{t.name}\tpartitions={partitions}\tretention={t.retention_ms // 86_400_000}d"
              f"\tkey={t.key}\tvalue={t.value}")
    return 0


def _run_async(coro_factory) -> int:
    settings = load_settings()
    settings.tenants()  # fail at start on a bad tenants file
    setup_logging(settings.log_level)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(coro_factory(settings))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from ingest.server import run

    return _run_async(run)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.tenants()
    if not settings.bootstrap_list:
        print("postwarden: POSTWARDEN_BOOTSTRAP_SERVERS is not set", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    from streams.worker import worker_main

    worker_main(settings.log_level)
    return 0


def cmd_sink_stats(args: argparse.Namespace) -> int:
    from sinks.stats_sink import run
    from sinks.stats_store import StoreError

    try:
        return _run_async(run)
    except StoreError as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        return 1


def cmd_clickhouse_migrate(args: argparse.Namespace) -> int:
    from sinks.stats_store import StoreError, open_store

    settings = load_settings()
    try:
        store = open_store(settings)
        store.migrate()
        version = ".".join(map(str, store.server_version()))
        store.close()
    except StoreError as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        return 1
    print(f"schema up to date on {store.backend} {version}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from postwarden.keyring import rotate

    settings = load_settings()
    path = settings.keys_file or settings.data_dir / "keys.json"
    settings.keyring()  # creates the file on first use, validates it otherwise
    print(f"new current master key {rotate(path)} in {path}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from postwarden.supervisor import run_up

    return run_up(load_settings())


def cmd_send(args: argparse.Namespace) -> int:
    settings = load_settings()
    host, port = settings.smtp_host, settings.smtp_port
    if args.server:
        host, _, p = args.server.rpartition(":")
        port = int(p)
    try:
        raw = args.file.read_bytes()
    except OSError as exc:
        print(f"postwarden: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    if raw.startswith(b"From "):  # mbox separator line, not a header
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    # Files on disk usually end lines with LF alone; SMTP requires CRLF.
    raw = re.sub(rb"\r?\n", b"\r\n", raw)
    try:
        with smtplib.SMTP(host, port, timeout=60) as smtp:
            refused = smtp.sendmail(args.sender, args.to, raw)
            code, reply = smtp.noop()
    except smtplib.SMTPResponseException as exc:
        print(f"refused: {exc.smtp_code} {exc.smtp_error.decode(errors='replace')}", file=sys.stderr)
        return 1
    except smtplib.SMTPRecipientsRefused as exc:
        for rcpt, (code, msg) in exc.recipients.items():
            print(f"refused {rcpt}: {code} {msg.decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"postwarden: cannot reach SMTP at {host}:{port}: {exc}", file=sys.stderr)
        return 1
    for rcpt, (code, msg) in refused.items():
        print(f"refused {rcpt}: {code} {msg.decode(errors='replace')}", file=sys.stderr)
    accepted = [r for r in args.to if r not in refused]
    if accepted:
        print(f"accepted for {len(accepted)} recipient(s) by {host}:{port}")
    return 0 if accepted else 1


def cmd_stats(args: argparse.Namespace) -> int:
    """Asks the running stats sink (it holds the embedded store's lock), else opens the store."""
    from postwarden.supervisor import child_health_port

    settings = load_settings()
    url = f"http://127.0.0.1:{child_health_port(settings, 'stats')}/stats?minutes={args.minutes}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            rows = json.load(resp)
    except OSError:
        from sinks.stats_sink import StatsSink
        from sinks.stats_store import StoreError, open_store

        try:
            store = open_store(settings)
            store.migrate()
            rows = StatsSink(settings, store).summary(args.minutes)
            store.close()
        except StoreError as exc:
            print(f"postwarden: {exc}", file=sys.stderr)
            return 1
    if not rows:
        print("no messages counted yet")
    for r in rows:
        print(f"{r['tenant']}\t{r['verdict']}\t{r['action']}\t{r['messages']}")
    return 0
