"""Entry point of a Faust worker process running every agent."""

from __future__ import annotations

import sys


def worker_main(loglevel: str = "info") -> None:
    from streams import mailbox_api, policy_agent, score_agent  # noqa: F401  (registers the agents)
    from streams.app import app, settings

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = ["postwarden-worker", "worker", "--loglevel", loglevel.lower()]
    if settings.health_port == 0:
        argv.append("--without-web")
    sys.argv = argv
    app.main()
