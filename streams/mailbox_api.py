"""The workers' internal mailbox API: one user's settings and quarantine, served by their partition's owner.

`postwarden web` may call any worker. The worker looks up which worker owns
the user's partition of the users table with Faust's router (the partition
assignment, shared among workers with each one's canonical URL) and forwards
the request there when it is not itself. Faust's own ``table_route`` drops
request bodies, hence this small forwarder; a request is forwarded once at
most, and a worker that is rebalancing answers 503 so the caller retries.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import time
from typing import Any

import faust
from aiohttp import ClientError, ClientTimeout, web
from prometheus_client import Counter

from postwarden import internal_api
from postwarden.passwords import hash_password, verify_password
from postwarden.users import SettingsError, UserCommand, effective, normalize_address
from streams.app import app, settings
from postwarden.sealing import RetiredKeyError, TamperedError
from streams.mailbox import (
    QUARANTINE_OPS, new_quarantine_command, store, submit, tenants, user_record,
)
from streams.quarantine_store import NotFound, entry_json

log = logging.getLogger(__name__)

keyring = settings.keyring()
REQUESTS = Counter("postwarden_mailbox_requests_total", "Mailbox API requests by where they were served",
                   ["served"])
MAX_PAGE = 100
# Failed sign-ins per account before it is locked for the rest of the window.
LOGIN_FAILURES_ALLOWED = 5
LOGIN_WINDOW_SECONDS = 300.0
_failures: dict[str, collections.deque] = collections.defaultdict(collections.deque)
# Unknown users cost as much to check as known ones: no enumeration by timing.
_NO_PASSWORD = hash_password("no user has this password", settings.password_hash_cost)


def _locked(address: str, now: float) -> bool:
    q = _failures[address]
    while q and q[0] < now - LOGIN_WINDOW_SECONDS:
        q.popleft()
    if not q:
        _failures.pop(address, None)
    return len(q) >= LOGIN_FAILURES_ALLOWED


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"error": detail}, status=status)


async def _forward(request: web.Request, owner: Any) -> web.Response:
    url = request.url.with_scheme(owner.scheme or "http").with_host(owner.host).with_port(owner.port)
    headers = {internal_api.HEADER: request.headers.get(internal_api.HEADER, ""),
               internal_api.ROUTED_HEADER: "1", "Content-Type": "application/json"}
    try:
        async with app.http_client.request(request.method, url, headers=headers, data=await request.read(),
                                           timeout=ClientTimeout(total=30)) as resp:
            return web.Response(body=await resp.read(), status=resp.status,
                                content_type=resp.content_type)
    except (ClientError, asyncio.TimeoutError):
        return _error(503, "partition owner unreachable")


def _owner(address: str) -> Any | None:
    """URL of the worker owning the address's partition; None if that is this worker."""
    owner = app.router.key_store("users", address.encode())
    here = app.conf.canonical_url
    if (owner.host, owner.port) == (here.host, here.port):
        return None
    return owner


async def _handle(view: faust.web.View, request: web.Request, address: str, rest: str) -> web.Response:
    if not internal_api.authorized(keyring, request.headers.get(internal_api.HEADER)):
        return _error(403, "missing or wrong internal token")
    try:
        address = normalize_address(address)
    except SettingsError as exc:
        return _error(400, str(exc))
    tenant = tenants.for_address(address)
    if tenant is None or request.query.get("tenant") != tenant.id:
        return _error(404, "no such user for this tenant")
    if app.rebalancing:
        return _error(503, "rebalancing")
    try:
        owner = _owner(address)
    except KeyError:
        return _error(503, "no partition assignment yet")
    if owner is not None:
        if request.headers.get(internal_api.ROUTED_HEADER):
            return _error(503, "partition moved")
        REQUESTS.labels("forwarded").inc()
        return await _forward(request, owner)
    REQUESTS.labels("local").inc()
    parts = rest.split("/") if rest else []
    body = await request.json() if request.method == "POST" and request.can_read_body else {}
    return await _local(request.method, parts, address, tenant.id, body, request.query)


async def _local(method: str, parts: list[str], address: str, tenant_id: str, body: dict,
                 query: Any) -> web.Response:
    now = time.time()
    if "sv" in query:
        # A Message Center session is valid only while the user's session version is unchanged.
        record = user_record(address)
        if query["sv"] != str(record.session_version if record else 0):
            return _error(401, "session ended")
    if method == "GET" and parts == ["user"]:
        record = user_record(address)
        eff = effective(record, tenants.get(tenant_id))
        return web.json_response({
            "address": address, "tenant": tenant_id, "exists": record is not None,
            "has_password": bool(record and record.password_hash),
            "session_version": record.session_version if record else 0,
            "own": {"filtering": record.filtering, "levels": record.levels} if record else
                   {"filtering": None, "levels": {}},
            "effective": {"filtering": eff.filtering, "levels": eff.levels,
                          "allow": list(eff.allow), "block": list(eff.block)},
            "quarantined": store.count(address),
        })
    if method == "POST" and parts == ["verify"]:
        if _locked(address, now):
            return web.json_response({"ok": False, "locked": True})
        record = user_record(address)
        stored = record.password_hash if record else None
        ok = await asyncio.get_running_loop().run_in_executor(
            None, verify_password, str(body.get("password", "")), stored or _NO_PASSWORD)
        if not ok or stored is None:
            _failures[address].append(now)
            return web.json_response({"ok": False, "locked": _locked(address, now)})
        _failures.pop(address, None)
        return web.json_response({"ok": True, "session_version": record.session_version})
    if method == "POST" and parts == ["commands"]:
        try:
            cmd = UserCommand(command_id=str(body["command_id"]), tenant=tenant_id, address=address,
                              op=str(body["op"]), settings=dict(body.get("settings") or {}),
                              password_hash=body.get("password_hash"))
        except (KeyError, TypeError, ValueError) as exc:
            return _error(400, f"bad command: {exc}")
        return web.json_response(await submit(cmd))
    if method == "GET" and parts == ["quarantine"]:
        try:
            offset = max(0, int(query.get("offset", 0)))
            limit = min(MAX_PAGE, max(1, int(query.get("limit", 25))))
        except ValueError:
            return _error(400, "offset and limit must be integers")
        total, entries = store.listing(address, query.get("q", "").strip(), offset, limit)
        return web.json_response({"total": total, "entries": [entry_json(e) for e in entries]})
    if method == "GET" and len(parts) == 2 and parts[0] == "quarantine":
        try:
            entry, raw = store.message(address, parts[1])
        except NotFound:
            return _error(404, "no such message")
        except (TamperedError, RetiredKeyError):
            return _error(409, "message failed authentication")
        return web.json_response({"entry": entry_json(entry), "raw": base64.b64encode(raw).decode()})
    if method == "POST" and len(parts) == 3 and parts[0] == "quarantine" and parts[2] in QUARANTINE_OPS:
        if parts[2] == "expire":
            return _error(400, "expiry is decided by the retention period")
        return web.json_response(await submit(new_quarantine_command(tenant_id, address, parts[1], parts[2])))
    return _error(404, "unknown mailbox request")


@app.page(internal_api.PREFIX + "/{address}/{rest:.*}")
class MailboxView(faust.web.View):
    async def get(self, request: web.Request, address: str, rest: str) -> web.Response:
        return await _handle(self, request, address, rest)

    async def post(self, request: web.Request, address: str, rest: str) -> web.Response:
        try:
            return await _handle(self, request, address, rest)
        except json.JSONDecodeError:
            return _error(400, "body must be JSON")
