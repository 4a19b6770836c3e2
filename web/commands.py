"""Subcommands: `postwarden web`, `postwarden api-key new`, `postwarden users import`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from postwarden.config import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("web", help="run the Message Center and the provider API").set_defaults(func=cmd_web)

    key = sub.add_parser("api-key", help="provider API keys")
    ksub = key.add_subparsers(dest="api_key_command", required=True)
    new = ksub.add_parser("new", help="make a key; prints it once, and the hash for the tenants file")
    new.add_argument("tenant")
    new.set_defaults(func=cmd_api_key_new)

    users = sub.add_parser("users", help="manage Message Center users through the provider API")
    usub = users.add_subparsers(dest="users_command", required=True)
    imp = usub.add_parser("import", help="apply a JSON Lines file of user changes (op: upsert|remove)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--tenant", required=True)
    imp.add_argument("--url", default=None, help="Message Center base URL (default: POSTWARDEN_PUBLIC_URL)")
    imp.set_defaults(func=cmd_users_import)


def cmd_web(args: argparse.Namespace) -> int:
    from postwarden.commands import _run_async
    from web.server import run

    return _run_async(run)


def cmd_api_key_new(args: argparse.Namespace) -> int:
    from web.provider_api import new_api_key

    settings = load_settings()
    if settings.tenants().get(args.tenant) is None:
        print(f"postwarden: no tenant {args.tenant!r} in {settings.tenants().source}", file=sys.stderr)
        return 2
    key, hashed = new_api_key()
    print(f"API key for {args.tenant} (shown once, give it to the provider):\n  {key}\n"
          f"Add to the tenant's api_keys in the tenants file:\n  - {hashed}")
    return 0


def cmd_users_import(args: argparse.Namespace) -> int:
    """The key comes from POSTWARDEN_API_KEY, never from the command line (shell history, ps)."""
    key = os.environ.get("POSTWARDEN_API_KEY", "")
    if not key:
        print("postwarden: set POSTWARDEN_API_KEY to the tenant's API key", file=sys.stderr)
        return 2
    try:
        body = args.file.read_bytes()
    except OSError as exc:
        print(f"postwarden: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    base = (args.url or load_settings().public_url).rstrip("/")
    req = urllib.request.Request(f"{base}/api/v1/tenants/{args.tenant}/users:batch", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/x-ndjson"})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            result = json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        if exc.code != 207:
            print(f"postwarden: import refused ({exc.code}): {detail}", file=sys.stderr)
            return 1
        result = json.loads(detail)
    except OSError as exc:
        print(f"postwarden: cannot reach {base}: {exc}", file=sys.stderr)
        return 1
    for r in result["results"]:
        if r["status"] not in ("ok", "removed", "pending"):
            print(f"line {r['line']}: {r['status']}: {r.get('error') or r.get('detail', '')}", file=sys.stderr)
    print(f"{len(result['results'])} change(s), {result['failed']} failed")
    return 0 if not result["failed"] else 1
