"""Ingest subcommands: `postwarden smtp-password-hash` for tenants' SMTP AUTH logins."""

from __future__ import annotations

import argparse
import getpass
import sys

from ingest.passwords import hash_password


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "smtp-password-hash",
        help="hash an SMTP AUTH password for a tenant's auth list (reads it from stdin or a prompt)")
    p.set_defaults(func=cmd_password_hash)


def cmd_password_hash(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("SMTP password: ")
        if getpass.getpass("again: ") != password:
            print("postwarden: the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 12:
        print("postwarden: use a password of at least 12 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0
