"""Entry point of a Faust worker process running every agent."""

from __future__ import annotations

import sys


# Faust's --loglevel takes its own names.
FAUST_LOGLEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}


def worker_main(loglevel: str = "INFO") -> None:
    # uvloop before anything makes a loop (Faust's consumer thread makes its own): in
    # bench/e2e.py it took the worker from ~140 to ~350 msg/s and ~3.3 to ~2.4 ms per message.
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    else:
        import mode.loop

        mode.loop.use("uvloop")
    from postwarden import state_dir
    from streams import mailbox_api, policy_agent, rescan_agent, score_agent  # noqa: F401  (registers the agents)
    from streams.app import app, settings

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.conf.tabledir = state_dir.claim(settings.data_dir / "faust" / "tables")
    argv = ["postwarden-worker", "worker", "--loglevel", FAUST_LOGLEVELS[loglevel]]
    if settings.health_port == 0:
        argv.append("--without-web")
    sys.argv = argv
    app.main()
