"""`postwarden dashboards push`: datasources, folder and dashboards into a Grafana, by its HTTP API.

Creates what is missing and updates what exists (datasources by uid, the
folder by uid, dashboards with overwrite), so running it again is harmless.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from dashboards import DIR, dashboard_files

FOLDER_UID = "postwarden"
DATASOURCES_FILE = DIR / "provisioning" / "datasources.yaml"
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)\}")


class PushError(RuntimeError):
    """Something to tell the operator; the message says what and where."""


def register(sub: argparse._SubParsersAction) -> None:
    dashboards = sub.add_parser("dashboards", help="Grafana dashboards")
    dsub = dashboards.add_subparsers(dest="dashboards_command", required=True)
    push = dsub.add_parser("push", help="create or update datasources, folder and dashboards in Grafana")
    push.add_argument("--url", required=True, help="Grafana base URL, e.g. http://grafana:3000")
    push.add_argument("--token", default=os.environ.get("POSTWARDEN_GRAFANA_TOKEN", ""),
                      help="service account token (default: $POSTWARDEN_GRAFANA_TOKEN)")
    push.add_argument("--folder", default="Postwarden", help="folder title")
    push.add_argument("--skip-datasources", action="store_true",
                      help="only folder and dashboards (datasources are provisioned otherwise)")
    push.set_defaults(func=cmd_push)


def load_datasources(env: dict[str, str], path: Path = DATASOURCES_FILE) -> list[dict[str, Any]]:
    """The provisioning file with its ${VARIABLES} expanded; a missing one is an error."""
    text = path.read_text()
    missing = sorted({m for m in _VARIABLE.findall(text) if not env.get(m)})
    if missing:
        raise PushError(f"{path.name} needs these environment variables: {', '.join(missing)}")
    data = yaml.safe_load(_VARIABLE.sub(lambda m: env[m[1]], text))
    return data["datasources"]


def push(api, folder_title: str, datasources: list[dict[str, Any]]) -> list[str]:
    from grafana_client.client import GrafanaClientError

    done = []
    for ds in datasources:
        try:
            api.datasource.get_datasource_by_uid(ds["uid"])
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            api.datasource.create_datasource(ds)
            done.append(f"datasource {ds['uid']}: created")
        else:
            api.datasource.update_datasource_by_uid(ds["uid"], ds)
            done.append(f"datasource {ds['uid']}: updated")
    try:
        folder = api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.folder.create_folder(folder_title, uid=FOLDER_UID)
        done.append(f"folder {FOLDER_UID}: created")
    else:
        if folder.get("title") != folder_title:
            api.folder.update_folder(FOLDER_UID, title=folder_title, overwrite=True)
        done.append(f"folder {FOLDER_UID}: kept")
    for path in dashboard_files():
        dashboard = json.loads(path.read_text())
        api.dashboard.update_dashboard({"dashboard": dashboard, "folderUid": FOLDER_UID,
                                        "overwrite": True, "message": "postwarden dashboards push"})
        done.append(f"dashboard {dashboard['uid']}: saved")
    return done


def cmd_push(args: argparse.Namespace) -> int:
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaException

    if not args.token:
        print("postwarden: a Grafana token is needed (--token or POSTWARDEN_GRAFANA_TOKEN)", file=sys.stderr)
        return 2
    if not args.url.startswith(("http://", "https://")):
        print(f"postwarden: --url must start with http:// or https:// (got {args.url!r})", file=sys.stderr)
        return 2
    try:
        datasources = [] if args.skip_datasources else load_datasources(dict(os.environ))
        api = GrafanaApi.from_url(args.url.rstrip("/"), credential=args.token, timeout=10)
        for line in push(api, args.folder, datasources):
            print(line)
    except PushError as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        return 2
    except GrafanaException as exc:
        if exc.status_code == 0:  # no HTTP answer at all
            print(f"postwarden: cannot reach Grafana at {args.url}: {exc}", file=sys.stderr)
        else:
            print(f"postwarden: Grafana at {args.url} refused the request: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"postwarden: cannot reach Grafana at {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0
