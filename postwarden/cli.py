"""The `postwarden` command. Each concern registers its own subcommands.

A module listed in COMMAND_MODULES exposes ``register(subparsers)``, adding
subparsers whose ``func(args) -> int`` runs the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from postwarden.config import ConfigError

COMMAND_MODULES = (
    "postwarden.commands",
    "streams.scoring_cli",
    "ingest.commands",
    "dashboards.push",
    "sinks.overview_page",
    "web.commands",
    "sinks.delivery_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postwarden",
        description="Email security gateway. Settings come from POSTWARDEN_* environment variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
