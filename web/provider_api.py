"""Provider API: JSON over HTTP, one API key per tenant (stored hashed in the tenants file).

A key opens its own tenant only: the tenant is in the path, the key must be
one of that tenant's, and every address must be in that tenant's domains.
Otherwise the answer is the same 404 as for a user that does not exist, so
nothing about other tenants leaks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
from pathlib import Path
from typing import Any

from aiohttp import web

from postwarden import signed_links
from postwarden.config import Settings, Tenant, Tenants
from postwarden.keyring import Keyring
from postwarden.passwords import PasswordError, check_policy, hash_password
from postwarden.users import SettingsError, normalize_address, validate_patch
from web.mailbox_client import MailboxClient, MailboxUnavailable

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
MAX_BATCH_LINES = 10_000
SSO_TTL_MAX = 3600
_MESSAGE_ID_RE = re.compile(r"^[0-9a-f]{12,64}$")
OPENAPI = Path(__file__).parent / "openapi.json"


def new_api_key() -> tuple[str, str]:
    """(key to give the provider, hash to put in the tenants file)."""
    key = "pwk_" + secrets.token_urlsafe(32)
    return key, hash_api_key(key)


def hash_api_key(key: str) -> str:
    # API keys are random and long: a fast hash is enough (no dictionary to guess from).
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _problem(status: int, detail: str) -> web.Response:
    return web.json_response({"error": detail}, status=status)


class ProviderApi:
    def __init__(self, settings: Settings, tenants: Tenants, keyring: Keyring, client: MailboxClient) -> None:
        self.settings, self.tenants, self.keyring, self.client = settings, tenants, keyring, client

    def routes(self) -> list[web.RouteDef]:
        u = PREFIX + "/tenants/{tenant}/users/{address}"
        return [
            web.get(PREFIX + "/openapi.json", self.openapi),
            web.post(PREFIX + "/tenants/{tenant}/users:batch", self._auth(self.batch, user=False)),
            web.get(u, self._auth(self.get_user)),
            web.put(u, self._auth(self.put_user)),
            web.delete(u, self._auth(self.remove_user)),
            web.put(u + "/password", self._auth(self.set_password)),
            web.get(u + "/quarantine", self._auth(self.quarantine)),
            web.post(u + "/quarantine/{mid}/release", self._auth(self.release)),
            web.post(u + "/sso-link", self._auth(self.sso_link)),
        ]

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=OPENAPI.read_text(), content_type="application/json")

    def _tenant_for_key(self, request: web.Request) -> Tenant | None:
        tenant = self.tenants.get(request.match_info["tenant"])
        auth = request.headers.get("Authorization", "")
        if tenant is None or not auth.startswith("Bearer "):
            return None
        presented = hash_api_key(auth[len("Bearer "):].strip())
        if any(hmac.compare_digest(presented, h) for h in tenant.api_keys):
            return tenant
        return None

    def _auth(self, handler, user: bool = True):
        async def wrapper(request: web.Request) -> web.StreamResponse:
            tenant = self._tenant_for_key(request)
            if tenant is None:
                return _problem(401, "missing or wrong API key for this tenant")
            request["tenant"] = tenant.id
            try:
                if not user:
                    return await handler(request, tenant)
                try:
                    address = normalize_address(request.match_info["address"])
                except SettingsError as exc:
                    return _problem(400, str(exc))
                owner = self.tenants.for_address(address)
                if owner is None or owner.id != tenant.id:
                    return _problem(404, "no such user in this tenant")
                return await handler(request, tenant, address)
            except MailboxUnavailable:
                return _problem(503, "the mail workers did not answer; retry")
            except json.JSONDecodeError:
                return _problem(400, "body must be JSON")
        return wrapper

    async def _body(self, request: web.Request) -> dict:
        if not request.can_read_body:
            return {}
        body = await request.json()
        if not isinstance(body, dict):
            raise json.JSONDecodeError("expected an object", "", 0)
        return body

    async def _hash(self, password: Any) -> str:
        if not isinstance(password, str):
            raise PasswordError("password must be a string")
        check_policy(password)
        return await asyncio.get_running_loop().run_in_executor(
            None, hash_password, password, self.settings.password_hash_cost)

    async def _upsert(self, tenant: Tenant, address: str, body: dict) -> tuple[int, dict]:
        unknown = set(body) - {"settings", "password"}
        if unknown:
            return 400, {"error": f"unknown fields: {', '.join(sorted(unknown))}"}
        try:
            patch = validate_patch(body.get("settings") or {})
            password_hash = await self._hash(body["password"]) if "password" in body else None
        except (SettingsError, PasswordError) as exc:
            return 400, {"error": str(exc)}
        outcome = await self.client.command(tenant.id, address, "upsert", patch, password_hash)
        return (200 if outcome.get("status") in ("ok", "pending") else 400), outcome

    async def get_user(self, request: web.Request, tenant: Tenant, address: str) -> web.Response:
        user = await self.client.user(tenant.id, address)
        if not user.get("exists"):
            return _problem(404, "no such user in this tenant")
        return web.json_response(user)

    async def put_user(self, request: web.Request, tenant: Tenant, address: str) -> web.Response:
        status, outcome = await self._upsert(tenant, address, await self._body(request))
        return web.json_response(outcome, status=status)

    async def remove_user(self, request: web.Request, tenant: Tenant, address: str) -> web.Response:
        return web.json_response(await self.client.command(tenant.id, address, "remove"))

    async def set_password(self, request: web.Request, tenant: Tenant, address: str) -> web.Response:
        body = await self._body(request)
        if set(body) != {"password"}:
            return _problem(400, "body must be {\"password\": ...}")
        status, outcome = await self._upsert(tenant, address, body)
        return web.json_response(outcome, status=status)

    async def quarantine(self, request: web.Request, tenant: Tenant, address: str) -> web.Response:
        try:
            offset = max(0, int(request.query.get("offset", "0")))
            limit = min(100, max(1, int(request.query.get("limit", "25"))))
        except ValueError:
            return _problem(400, "offset and limit must be integers")
        return web.json_response(await self.client.quarantine(
            tenant.id, address, request.query.get("q", ""), offset, limit))

    async def release(self, request: web.Request, tenant: Tenant, address: str) -> web.Response:
        mid = request.match_info["mid"]
        if not _MESSAGE_ID_RE.match(mid):
            return _problem(404, "no such message")
        outcome = await self.client.act(tenant.id, address, mid, "release")
        status = {"released": 200, "already_released": 200, "not_found": 404, "pending": 202}.get(
            outcome.get("status"), 409)
        return web.json_response(outcome, status=status)

    async def sso_link(self, request: web.Request, tenant: Tenant, address: str) -> web.Response:
        body = await self._body(request)
        ttl = body.get("ttl", 300)
        if not isinstance(ttl, int) or not 10 <= ttl <= SSO_TTL_MAX:
            return _problem(400, f"ttl must be an integer number of seconds, 10..{SSO_TTL_MAX}")
        token = signed_links.sign(self.keyring, tenant.id, "sso", {"r": address}, ttl)
        return web.json_response({"url": f"{self.settings.public_url.rstrip('/')}/sso/{token}",
                                  "expires_in": ttl})

    async def batch(self, request: web.Request, tenant: Tenant) -> web.Response:
        """JSON Lines, one change per line: {"op": "upsert"|"remove", "address", "password"?, "settings"?}."""
        text = (await request.read()).decode("utf-8", "replace")
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > MAX_BATCH_LINES:
            return _problem(413, f"at most {MAX_BATCH_LINES} lines per batch")
        results = []
        for n, line in enumerate(lines, 1):
            results.append({"line": n, **await self._batch_line(tenant, line)})
        failed = sum(1 for r in results if r["status"] not in ("ok", "removed", "pending"))
        log.info("batch applied", extra={"tenant": tenant.id, "count": len(results), "rows": failed})
        return web.json_response({"results": results, "failed": failed}, status=200 if not failed else 207)

    async def _batch_line(self, tenant: Tenant, line: str) -> dict:
        try:
            change = json.loads(line)
            if not isinstance(change, dict):
                raise ValueError("a line must be a JSON object")
            op = change.pop("op", None)
            address = normalize_address(str(change.pop("address", "")))
        except (ValueError, SettingsError) as exc:
            return {"status": "invalid", "error": str(exc)}
        owner = self.tenants.for_address(address)
        if owner is None or owner.id != tenant.id:
            return {"status": "invalid", "error": "address is not in this tenant's domains"}
        if op == "remove":
            return await self.client.command(tenant.id, address, "remove")
        if op != "upsert":
            return {"status": "invalid", "error": "op must be upsert or remove"}
        status, outcome = await self._upsert(tenant, address, change)
        return outcome if status == 200 else {"status": "invalid", **outcome}
