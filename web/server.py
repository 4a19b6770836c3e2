"""`postwarden web`: the Message Center and the provider API on one port, health on another.

Stateless: sessions are signed cookies and all user data stays in the
workers, so any number of replicas can run behind a load balancer.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from postwarden.config import Settings, Tenants
from postwarden.health import HealthServer
from postwarden.process_lifecycle import stop_on_signals
from web.mailbox_client import MailboxClient
from web.message_center import MessageCenter
from web.provider_api import PREFIX as API_PREFIX
from web.provider_api import ProviderApi

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors {ancestors}")


def security_headers(tenants: Tenants, https: bool):
    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        tenant = tenants.get(request.get("tenant", ""))
        ancestors = " ".join(tenant.frame_ancestors) if tenant and tenant.frame_ancestors else "'none'"
        h = response.headers
        h.setdefault("Content-Security-Policy", _CSP.format(ancestors=ancestors))
        if ancestors == "'none'":
            h["X-Frame-Options"] = "DENY"
        h["X-Content-Type-Options"] = "nosniff"
        # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on our own
        # forms, and the origin check needs the real one. Other sites get no referrer at all.
        h["Referrer-Policy"] = "same-origin"
        h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=()"
        h["Cross-Origin-Resource-Policy"] = "same-origin"
        if not request.path.startswith("/static/"):
            h["Cache-Control"] = "no-store"
        if https:
            h["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        return response
    return middleware


def build_app(settings: Settings, tenants: Tenants, client: MailboxClient) -> web.Application:
    keyring = settings.keyring()
    app = web.Application(middlewares=[security_headers(tenants, settings.public_url.startswith("https://"))],
                          client_max_size=20 * 1024 * 1024)
    app.add_routes(MessageCenter(settings, tenants, keyring, client).routes())
    app.add_routes(ProviderApi(settings, tenants, keyring, client).routes())
    app.router.add_static("/static/", STATIC, append_version=False)
    log.debug("routes ready", extra={"component": "web", "topic": API_PREFIX})
    return app


async def run(settings: Settings) -> None:
    tenants = settings.tenants()
    client = MailboxClient(settings.worker_url, settings.keyring())
    runner = web.AppRunner(build_app(settings, tenants, client), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.web_host, settings.web_port, reuse_address=True).start()
    health = HealthServer(settings.health_host, settings.health_port, ready=lambda: True) \
        if settings.health_port else None
    if health:
        await health.start()
    log.info("message center listening", extra={"component": "web", "status": "ready"})
    stop = stop_on_signals()
    await stop.wait()
    if health:
        await health.stop()
    await runner.cleanup()
    await client.close()
