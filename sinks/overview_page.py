"""The operator overview page: the main dashboard charts as server-rendered pictures.

No Grafana runs in the one-machine setup, so this page runs the mail-flow
dashboard's own panel queries (macros expanded) against the configured
ClickHouse backend and draws each as SVG. It sits behind an operator login
(scrypt hash from POSTWARDEN_OPERATOR_PASSWORD_HASH) and shows only what the
statistics tables hold: k-anonymous aggregates.

`postwarden overview` serves it alone; the stats sink serves it too when the
hash is set (on one machine the embedded store belongs to that process).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from html import escape

from aiohttp import web

from dashboards import DIR
from dashboards.macros import expand
from postwarden.config import Settings, load_settings
from postwarden.process_lifecycle import stop_on_signals
from sinks import overview_charts
from sinks.operator_login import Sessions, check_hash_format, hash_password, verify_password
from sinks.stats_store import DATABASE, StatsStore, StoreError

COOKIE = "pw_operator"
DASHBOARD = DIR / "postwarden-mail-flow.json"
RANGES = {"1": 3600, "6": 6 * 3600, "24": 24 * 3600, "168": 7 * 86400}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STYLE = ("body{font-family:'DejaVu Sans',sans-serif;margin:24px;background:#f4f5f5;color:#222}"
         "h1{font-size:20px}.grid{display:flex;flex-wrap:wrap;gap:12px}"
         "img{background:#fff;border:1px solid #ddd}form.inline{display:inline}"
         "label{margin-right:12px}")


def panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"]
            if p["targets"] and p["targets"][0].get("rawSql")]


class OverviewApp:
    def __init__(self, store: StatsStore, password_hash: str) -> None:
        check_hash_format(password_hash)
        self.store, self.password_hash = store, password_hash
        self.sessions = Sessions()
        self.panels = {str(p["id"]): p for p in panels()}
        # One query at a time: chdb sessions are not meant for concurrent use.
        self._lock = asyncio.Lock()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers])
        app.add_routes([
            web.get("/", self.index), web.get("/login", self.login_form),
            web.post("/login", self.login), web.post("/logout", self.logout),
            web.get("/charts/{panel}.svg", self.chart),
        ])
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler):
        response = await handler(request)
        response.headers.update(HEADERS)
        return response

    def _authorized(self, request: web.Request) -> bool:
        return self.sessions.valid(request.cookies.get(COOKIE))

    async def login_form(self, request: web.Request, error: str = "", status: int = 200) -> web.Response:
        message = f'<p role="alert" style="color:#c4162a">{escape(error)}</p>' if error else ""
        return web.Response(status=status, content_type="text/html", text=(
            f"<!doctype html><html><head><title>Postwarden operator login</title><style>{STYLE}</style>"
            "</head><body><h1>Postwarden operator overview</h1>" + message +
            '<form method="post" action="/login"><label>Password '
            '<input type="password" name="password" autocomplete="current-password" autofocus></label>'
            '<button type="submit">Sign in</button></form></body></html>'))

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        password = str(form.get("password", ""))
        ok = bool(password) and await asyncio.to_thread(verify_password, password, self.password_hash)
        if not ok:
            await asyncio.sleep(0.5)  # slows guessing; scrypt already costs each try
            return await self.login_form(request, "Wrong password.", status=401)
        response = web.HTTPSeeOther("/")
        response.set_cookie(COOKIE, self.sessions.new(), httponly=True, samesite="Strict",
                            secure=request.secure, path="/")
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.end(request.cookies.get(COOKIE))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def _tenants(self) -> list[str]:
        async with self._lock:
            rows = await asyncio.to_thread(
                self.store.query, f"SELECT DISTINCT tenant FROM {DATABASE}.stats_counts ORDER BY tenant")
        return [r[0] for r in rows]

    def _selection(self, request: web.Request, known: list[str]) -> tuple[str, str]:
        hours = request.query.get("hours", "6")
        tenant = request.query.get("tenant", "")
        if hours not in RANGES:
            raise web.HTTPBadRequest(text=f"hours must be one of {', '.join(RANGES)}")
        if tenant and tenant not in known:
            raise web.HTTPBadRequest(text="unknown tenant")
        return hours, tenant

    async def index(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPSeeOther("/login")
        known = await self._tenants()
        hours, tenant = self._selection(request, known)
        query = f"hours={hours}&tenant={tenant}"
        ranges = "".join(f'<option value="{h}"{" selected" if h == hours else ""}>last {h} h</option>'
                         for h in RANGES)
        tenants = '<option value="">all tenants</option>' + "".join(
            f'<option value="{escape(t)}"{" selected" if t == tenant else ""}>{escape(t)}</option>'
            for t in known)
        charts = "".join(
            f'<img src="/charts/{pid}.svg?{escape(query)}" alt="{escape(p["title"])}">'
            for pid, p in self.panels.items())
        return web.Response(content_type="text/html", text=(
            f"<!doctype html><html><head><title>Postwarden overview</title><style>{STYLE}</style>"
            "</head><body><h1>Postwarden overview</h1>"
            '<form method="get" action="/"><label>Range <select name="hours">' + ranges +
            '</select></label><label>Tenant <select name="tenant">' + tenants +
            '</select></label><button type="submit">Show</button></form>'
            '<form class="inline" method="post" action="/logout"><button type="submit">Sign out'
            '</button></form><p>Aggregate, k-anonymous counts; cells with fewer than k messages '
            f'are shown as "other".</p><div class="grid">{charts}</div></body></html>'))

    async def chart(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(text="sign in first")
        panel = self.panels.get(request.match_info["panel"])
        if panel is None:
            raise web.HTTPNotFound(text="no such chart")
        known = await self._tenants()
        hours, tenant = self._selection(request, known)
        end = int(time.time())
        sql = expand(panel["targets"][0]["rawSql"], end - RANGES[hours], end, [tenant] if tenant else known)
        try:
            async with self._lock:
                columns, rows = await asyncio.to_thread(self.store.query_columns, sql)
        except StoreError:
            raise web.HTTPServiceUnavailable(text="ClickHouse is not available") from None
        title, kind = panel["title"], panel["type"]
        if kind == "stat":
            svg = overview_charts.stat(title, rows, panel["fieldConfig"]["defaults"].get("unit", ""))
        elif kind == "timeseries":
            svg = overview_charts.line_chart(title, rows, columns)
        else:
            svg = overview_charts.bar_chart(title, rows, columns)
        return web.Response(body=svg.encode(), content_type="image/svg+xml")


class OverviewServer:
    def __init__(self, settings: Settings, store: StatsStore) -> None:
        self.settings = settings
        self.overview = OverviewApp(store, settings.operator_password_hash)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.overview.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.settings.overview_host, self.settings.overview_port,
                          reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def register(sub: argparse._SubParsersAction) -> None:
    overview = sub.add_parser("overview", help="serve the operator overview page (charts behind a login)")
    overview.set_defaults(func=cmd_overview)
    osub = overview.add_subparsers(dest="overview_command")
    osub.add_parser("hash-password", help="read a password and print its hash for "
                    "POSTWARDEN_OPERATOR_PASSWORD_HASH").set_defaults(func=cmd_hash_password)


def cmd_hash_password(args: argparse.Namespace) -> int:
    password = getpass.getpass("Operator password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    try:
        print(hash_password(password))
    except ValueError as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_overview(args: argparse.Namespace) -> int:
    from postwarden.logs import setup_logging
    from sinks.stats_store import open_store

    settings = load_settings()
    if not settings.operator_password_hash:
        print("postwarden: set POSTWARDEN_OPERATOR_PASSWORD_HASH first "
              "(postwarden overview hash-password)", file=sys.stderr)
        return 2
    try:
        check_hash_format(settings.operator_password_hash)
    except ValueError as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        return 2
    if not settings.overview_port:
        print("postwarden: POSTWARDEN_OVERVIEW_PORT is 0 (off)", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        store = open_store(settings)
        store.migrate()
    except StoreError as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        return 1

    async def serve() -> None:
        server = OverviewServer(settings, store)
        stop = stop_on_signals()
        await server.start()
        print(f"operator overview on http://{settings.overview_host}:{settings.overview_port}/", flush=True)
        await stop.wait()
        await server.stop()

    try:
        asyncio.run(serve())
    finally:
        store.close()
    return 0
