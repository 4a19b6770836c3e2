"""Commands of the delivery side: `sink delivery`, `sink notify` and `queue`."""

from __future__ import annotations

import argparse
import sys
import time

from postwarden.config import Settings, load_settings


def register(sub: argparse._SubParsersAction) -> None:
    sink = sub.choices["sink"]  # registered by postwarden.commands
    ssub = next(a for a in sink._actions if isinstance(a, argparse._SubParsersAction))
    ssub.add_parser("delivery", help="relay mail.deliver to the tenants' mailbox servers").set_defaults(
        func=cmd_sink_delivery)
    ssub.add_parser("notify", help="send virus alerts and quarantine digests").set_defaults(
        func=cmd_sink_notify)

    queue = sub.add_parser("queue", help="show what waits for delivery, by destination, and for a virus rescan")
    queue.add_argument("--message-id", help="show the recipients and attempts of one message")
    queue.set_defaults(func=cmd_queue)


def _needs_broker() -> int | None:
    if not load_settings().bootstrap_list:
        print("postwarden: POSTWARDEN_BOOTSTRAP_SERVERS is not set", file=sys.stderr)
        return 2
    return None


def _bootstrap_of_running_up(settings) -> list[str]:
    from postwarden.up_marker import running_bootstrap

    found = running_bootstrap(settings.data_dir)
    return found.split(",") if found else []


def cmd_sink_delivery(args: argparse.Namespace) -> int:
    from postwarden.commands import _run_async
    from sinks.delivery_sink import run

    return _needs_broker() or _run_async(run)


def cmd_sink_notify(args: argparse.Namespace) -> int:
    from postwarden.commands import _run_async
    from sinks.notifier import run

    return _needs_broker() or _run_async(run)


def cmd_queue(args: argparse.Namespace) -> int:
    from postwarden.kafka_security import client_kwargs
    from sinks.delivery_sink import DeliverySink, destination
    from sinks.outbound_queue import scan_queue

    settings = load_settings()
    bootstrap = settings.bootstrap_list or _bootstrap_of_running_up(settings)
    if not bootstrap:
        print("postwarden: POSTWARDEN_BOOTSTRAP_SERVERS is not set and no `postwarden up` "
              f"is running on {settings.data_dir}", file=sys.stderr)
        return 2
    tenants = settings.tenants()
    group = DeliverySink.group_name(settings)
    try:
        index = scan_queue(bootstrap, group,
                           destination_of=lambda t: destination(tenants.get(t)),
                           security=client_kwargs(settings))
    except Exception as exc:  # kafka-python raises a wide family; say what failed
        print(f"postwarden: cannot read the delivery queue: {exc}", file=sys.stderr)
        return 1
    now = time.time()
    if args.message_id:
        entries = index.for_message(args.message_id)
        if not entries:
            print(f"message {args.message_id} is not waiting for delivery")
            return 0
        for e in entries:
            print(f"{e.recipient}\ttenant={e.tenant}\tdestination={e.destination}\t"
                  f"attempts={e.attempts}\tnext={_in(e.due_at, now)}\tlast={e.last_reply or '-'}")
        return 0
    if (code := _print_rescan_queue(settings, bootstrap, now)) is not None:
        return code
    rows = index.summary(now)
    if not rows:
        print("nothing is waiting for delivery")
        return 0
    print("tenant\tdestination\twaiting\toldest\tnext attempt\tmax attempts")
    for r in rows:
        nxt = "now" if r.next_attempt_in is None else _duration(r.next_attempt_in)
        print(f"{r.tenant}\t{r.destination}\t{r.waiting}\t{_duration(r.oldest_age)}\t{nxt}\t"
              f"{r.max_attempts}")
    return 0


def _print_rescan_queue(settings: Settings, bootstrap: list[str], now: float) -> int | None:
    """Mail held back from routing until ClamAV can scan it (streams.scan_retry)."""
    from postwarden.kafka_security import client_kwargs
    from streams.scan_retry import scan_rescan_queue

    try:
        rescan = scan_rescan_queue(bootstrap, settings.app_id,
                                   security=client_kwargs(settings), now=now)
    except Exception as exc:  # kafka-python raises a wide family; say what failed
        print(f"postwarden: cannot read the rescan queue: {exc}", file=sys.stderr)
        return 1
    if rescan.waiting:
        print(f"waiting for a virus rescan: {rescan.waiting}, oldest {_duration(rescan.oldest_age)}")
    else:
        print("nothing is waiting for a virus rescan")
    return None


def _in(due: float | None, now: float) -> str:
    return "now" if due is None else f"in {_duration(max(0.0, due - now))}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"
