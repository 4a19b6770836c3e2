"""The Message Center: a user's quarantine and settings, as server-rendered pages.

Every page acts for the signed-in user only: the address comes from the
session, never from the URL or a form, so guessing another user's message id
finds nothing. Every state change is a POST carrying a CSRF token bound to
the session, from an allowed origin.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import time
from functools import wraps
from pathlib import Path
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from postwarden import signed_links
from postwarden.config import AGGRESSIVENESS_LEVELS, Settings, Tenants
from postwarden.keyring import Keyring
from postwarden.passwords import MAX_LENGTH, MIN_LENGTH, PasswordError, check_policy, hash_password
from postwarden.users import SettingsError, normalize_address, normalize_sender_entry
from web import safe_view, sessions
from web.mailbox_client import MailboxClient, MailboxUnavailable, SessionEnded

log = logging.getLogger(__name__)

PAGE_SIZE = 25
_MESSAGE_ID_RE = re.compile(r"^[0-9a-f]{12,64}$")
LOGIN_COOKIE = "pw_login"
# Sign-in attempts per client address and window, on top of the per-account lock in the workers.
LOGIN_ATTEMPTS_PER_CLIENT = 20
LOGIN_WINDOW_SECONDS = 300.0

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined)
TEMPLATES.filters["datetime"] = lambda ts: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))

STATUS_TEXT = {
    "released": "The message was released and is on its way to your inbox.",
    "already_released": "This message was already released.",
    "already_deleted": "This message was deleted, it can no longer be released.",
    "deleted": "The message was deleted.",
    "not_found": "There is no such message in your quarantine.",
    "refused": "Messages with a virus cannot be released.",
    "tampered": "This message failed its integrity check and cannot be opened.",
    "pending": "Your request is being processed; refresh in a moment.",
}


def render(template: str, status: int = 200, **context) -> web.Response:
    context.setdefault("address", None)
    context.setdefault("framed", False)
    context.setdefault("csrf", "")
    return web.Response(text=TEMPLATES.get_template(template).render(**context), status=status,
                        content_type="text/html", charset="utf-8")


class MessageCenter:
    def __init__(self, settings: Settings, tenants: Tenants, keyring: Keyring, client: MailboxClient) -> None:
        self.settings, self.tenants, self.keyring, self.client = settings, tenants, keyring, client
        self.secure_cookies = settings.public_url.startswith("https://")
        self._attempts: dict[str, collections.deque] = collections.defaultdict(collections.deque)

    def routes(self) -> list[web.RouteDef]:
        a = self._authenticated
        return [
            web.get("/", self.home),
            web.get("/login", self.login_form),
            web.post("/login", self.login),
            web.post("/logout", a(self.logout)),
            web.get("/quarantine", a(self.quarantine)),
            web.get("/quarantine/{mid}", a(self.view)),
            web.get("/quarantine/{mid}/attachments/{index}", a(self.download)),
            web.post("/quarantine/{mid}/release", a(self.release)),
            web.post("/quarantine/{mid}/delete", a(self.delete)),
            web.get("/settings", a(self.settings_page)),
            web.post("/settings", a(self.save_settings)),
            web.post("/settings/allow", a(self.allow_sender)),
            web.get("/settings/password", a(self.password_page)),
            web.post("/settings/password", a(self.change_password)),
            web.get("/r/{token}", self.release_link),
            web.post("/r/{token}", self.release_link),
            web.get("/open/{token}", self.open_link),
            web.get("/sso/{token}", self.sso_link),
        ]

    # -- sessions ---------------------------------------------------------------------------

    def _set_session(self, response: web.StreamResponse, s: sessions.Session) -> None:
        value = sessions.encode(self.keyring, s, time.time())
        response.headers.add("Set-Cookie", f"{sessions.COOKIE}={value}; "
                             f"{sessions.cookie_attributes(s.framed, self.secure_cookies)}; "
                             f"Max-Age={sessions.IDLE_SECONDS}")

    def _clear_session(self, response: web.StreamResponse, framed: bool) -> None:
        response.headers.add("Set-Cookie", f"{sessions.COOKIE}=; "
                             f"{sessions.cookie_attributes(framed, self.secure_cookies)}; Max-Age=0")

    def _authenticated(self, handler):
        @wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            s = sessions.decode(self.keyring, request.cookies.get(sessions.COOKIE), time.time())
            if s is None:
                return self._signed_out(request)
            request["tenant"] = s.tenant
            if request.method == "POST" and not await self._csrf_ok(request, s.sid):
                return render("error.html", 403, title="Request refused",
                              message="This form has expired or did not come from this site. "
                                      "Go back, reload the page and try again.")
            try:
                response = await handler(request, s)
            except SessionEnded:
                response = self._signed_out(request)
                self._clear_session(response, s.framed)
                return response
            except MailboxUnavailable:
                return render("error.html", 503, title="Try again shortly",
                              message="Your quarantine is not reachable right now.")
            renewed = any(v.startswith(sessions.COOKIE + "=") for v in response.headers.getall("Set-Cookie", []))
            if (response.status < 400 or response.status == 404) and not renewed:
                self._set_session(response, s)  # sliding idle timeout
            return response
        return wrapper

    def _signed_out(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path != "/":
            return web.HTTPFound("/login?" + urlencode({"next": request.path_qs}))
        return web.HTTPFound("/login")

    async def _csrf_ok(self, request: web.Request, bound_to: str) -> bool:
        origin = request.headers.get("Origin")
        if origin is not None and origin != self._origin():
            return False
        form = await request.post()
        return sessions.csrf_ok(self.keyring, bound_to, form.get("csrf"))

    def _origin(self) -> str:
        scheme, _, rest = self.settings.public_url.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}"

    def _page(self, template: str, s: sessions.Session, status: int = 200, **context) -> web.Response:
        return render(template, status, address=s.address, framed=s.framed,
                      csrf=sessions.csrf_token(self.keyring, s.sid), **context)

    # -- sign-in ----------------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.StreamResponse:
        s = sessions.decode(self.keyring, request.cookies.get(sessions.COOKIE), time.time())
        return web.HTTPFound("/quarantine" if s else "/login")

    async def login_form(self, request: web.Request, error: str = "", status: int = 200) -> web.Response:
        nonce = request.cookies.get(LOGIN_COOKIE)
        fresh = not nonce or not re.fullmatch(r"[0-9a-f]{32}", nonce)
        if fresh:
            nonce = os.urandom(16).hex()
        next_path = request.query.get("next", "")
        response = render("login.html", status, error=error, csrf=sessions.csrf_token(self.keyring, nonce),
                          next=next_path if next_path.startswith("/") and not next_path.startswith("//") else "")
        if fresh:
            response.headers.add("Set-Cookie", f"{LOGIN_COOKIE}={nonce}; Path=/login; HttpOnly; SameSite=Lax"
                                 + ("; Secure" if self.secure_cookies else ""))
        return response

    def _throttled(self, client: str, now: float) -> bool:
        q = self._attempts[client]
        while q and q[0] < now - LOGIN_WINDOW_SECONDS:
            q.popleft()
        q.append(now)
        return len(q) > LOGIN_ATTEMPTS_PER_CLIENT

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not await self._csrf_ok(request, request.cookies.get(LOGIN_COOKIE, "")):
            return await self.login_form(request, "The sign-in form expired. Please try again.", 403)
        form = await request.post()
        now = time.time()
        if self._throttled(request.remote or "", now):
            return await self.login_form(request, "Too many sign-in attempts. Wait a few minutes.", 429)
        wrong = "Address or password is wrong."
        try:
            address = normalize_address(str(form.get("address", "")))
        except SettingsError:
            return await self.login_form(request, wrong, 401)
        tenant = self.tenants.for_address(address)
        if tenant is None:
            return await self.login_form(request, wrong, 401)
        try:
            result = await self.client.verify(tenant.id, address, str(form.get("password", "")))
        except MailboxUnavailable:
            return await self.login_form(request, "Sign-in is not available right now.", 503)
        if result.get("locked"):
            log.warning("sign-in locked after repeated failures", extra={"tenant": tenant.id})
            return await self.login_form(request, "Too many sign-in attempts. Wait a few minutes.", 429)
        if not result.get("ok"):
            return await self.login_form(request, wrong, 401)
        log.info("signed in", extra={"tenant": tenant.id, "component": "message-center"})
        next_path = str(form.get("next", ""))
        if not next_path.startswith("/") or next_path.startswith("//"):
            next_path = "/quarantine"
        response = web.HTTPFound(next_path)
        self._set_session(response, sessions.new_session(tenant.id, address, int(result["session_version"]),
                                                         False, now))
        response.headers.add("Set-Cookie", f"{LOGIN_COOKIE}=; Path=/login; Max-Age=0")
        return response

    async def logout(self, request: web.Request, s: sessions.Session) -> web.StreamResponse:
        await self.client.command(s.tenant, s.address, "end_sessions")
        response = render("error.html", 200, title="Signed out",
                          message="You are signed out on every device.") if s.framed \
            else web.HTTPFound("/login")
        self._clear_session(response, s.framed)
        return response

    async def _link_session(self, request: web.Request, action: str, framed: bool) -> web.StreamResponse:
        try:
            tenant_id, claims = signed_links.verify(self.keyring, request.match_info["token"], action)
            address = normalize_address(str(claims["r"]))
        except (signed_links.LinkError, KeyError, SettingsError) as exc:
            return render("error.html", 400, title="This link cannot be used",
                          message=f"The sign-in link is not valid ({exc}). Ask for a new one.")
        tenant = self.tenants.for_address(address)
        if tenant is None or tenant.id != tenant_id:
            return render("error.html", 400, title="This link cannot be used",
                          message="The sign-in link is not valid for this address.")
        request["tenant"] = tenant.id
        try:
            user = await self.client.user(tenant.id, address)
        except MailboxUnavailable:
            return render("error.html", 503, title="Try again shortly",
                          message="Your quarantine is not reachable right now.")
        response = web.HTTPFound("/quarantine")
        self._set_session(response, sessions.new_session(tenant.id, address, int(user["session_version"]),
                                                         framed, time.time()))
        log.info("signed in by link", extra={"tenant": tenant.id, "reason": action})
        return response

    async def open_link(self, request: web.Request) -> web.StreamResponse:
        return await self._link_session(request, "open", framed=False)

    async def sso_link(self, request: web.Request) -> web.StreamResponse:
        return await self._link_session(request, "sso", framed=True)

    # -- quarantine -------------------------------------------------------------------------

    async def quarantine(self, request: web.Request, s: sessions.Session) -> web.Response:
        query = request.query.get("q", "").strip()[:200]
        try:
            page = max(1, int(request.query.get("page", "1")))
        except ValueError:
            page = 1
        data = await self.client.quarantine(s.tenant, s.address, query, (page - 1) * PAGE_SIZE, PAGE_SIZE,
                                            session_version=s.session_version)
        pages = max(1, -(-data["total"] // PAGE_SIZE))
        return self._page("quarantine.html", s, entries=data["entries"], total=data["total"], q=query,
                          page=page, pages=pages, notice=STATUS_TEXT.get(request.query.get("done", ""), ""),
                          page_url=lambda p: "/quarantine?" + urlencode({"q": query, "page": p}))

    def _mid(self, request: web.Request) -> str | None:
        mid = request.match_info["mid"]
        return mid if _MESSAGE_ID_RE.match(mid) else None

    async def _message(self, request: web.Request, s: sessions.Session):
        mid = self._mid(request)
        if mid is None:
            return None
        return await self.client.message(s.tenant, s.address, mid, session_version=s.session_version)

    def _not_found(self, s: sessions.Session) -> web.Response:
        return self._page("error.html", s, 404, title="Not found", message=STATUS_TEXT["not_found"])

    async def view(self, request: web.Request, s: sessions.Session) -> web.Response:
        found = await self._message(request, s)
        if found is None:
            return self._not_found(s)
        entry, raw = found
        safe = await asyncio.get_running_loop().run_in_executor(None, safe_view.parse, raw)
        return self._page("message.html", s, entry=entry, msg=safe, mid=entry["message_id"])

    async def download(self, request: web.Request, s: sessions.Session) -> web.StreamResponse:
        found = await self._message(request, s)
        try:
            index = int(request.match_info["index"])
        except ValueError:
            index = -1
        part = safe_view.attachment(found[1], index) if found else None
        if part is None:
            return self._not_found(s)
        filename, payload = part
        return web.Response(body=payload, headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Security-Policy": "sandbox; default-src 'none'",
        })

    async def release(self, request: web.Request, s: sessions.Session) -> web.Response:
        mid = self._mid(request)
        if mid is None:
            return self._not_found(s)
        found = await self.client.message(s.tenant, s.address, mid, session_version=s.session_version)
        outcome = await self.client.act(s.tenant, s.address, mid, "release", session_version=s.session_version)
        status = outcome.get("status", "")
        sender = found[0]["sender"] if found and status == "released" else ""
        return self._page("released.html", s, 200 if status == "released" else 409,
                          message=STATUS_TEXT.get(status, status), sender=sender)

    async def delete(self, request: web.Request, s: sessions.Session) -> web.StreamResponse:
        mid = self._mid(request)
        if mid is None:
            return self._not_found(s)
        outcome = await self.client.act(s.tenant, s.address, mid, "delete", session_version=s.session_version)
        return web.HTTPFound("/quarantine?" + urlencode({"done": outcome.get("status", "")}))

    # -- settings ---------------------------------------------------------------------------

    async def settings_page(self, request: web.Request, s: sessions.Session, notice: str = "",
                            error: str = "", status: int = 200) -> web.Response:
        user = await self.client.user(s.tenant, s.address, session_version=s.session_version)
        tenant = self.tenants.get(s.tenant)
        if request.query.get("done") == "password" and not notice:
            notice = "Your password is changed. Other devices are signed out."
        categories = sorted(set(tenant.default_user.levels) | set(user["effective"]["levels"]))
        return self._page("settings.html", s, status, user=user, categories=categories,
                          levels=AGGRESSIVENESS_LEVELS, defaults=tenant.default_user, notice=notice, error=error)

    async def save_settings(self, request: web.Request, s: sessions.Session) -> web.Response:
        form = await request.post()
        filtering = {"on": True, "off": False}.get(str(form.get("filtering", "")))
        levels = {k[len("level_"):]: str(v) for k, v in form.items() if k.startswith("level_")}
        patch = {"filtering": filtering, "levels": levels,
                 "allow": [x for x in str(form.get("allow", "")).split() if x],
                 "block": [x for x in str(form.get("block", "")).split() if x]}
        outcome = await self.client.command(s.tenant, s.address, "upsert", patch,
                                            session_version=s.session_version)
        if outcome.get("status") not in ("ok", "pending"):
            return await self.settings_page(request, s, error=outcome.get("detail", "not saved"), status=400)
        return await self.settings_page(request, s, notice="Your settings are saved. They apply to the next "
                                                           "message you receive.")

    async def allow_sender(self, request: web.Request, s: sessions.Session) -> web.Response:
        form = await request.post()
        try:
            sender = normalize_sender_entry(str(form.get("sender", "")))
        except SettingsError as exc:
            return await self.settings_page(request, s, error=str(exc), status=400)
        outcome = await self.client.command(s.tenant, s.address, "allow_sender", {"sender": sender},
                                            session_version=s.session_version)
        if outcome.get("status") not in ("ok", "pending"):
            return await self.settings_page(request, s, error=outcome.get("detail", "not saved"), status=400)
        return await self.settings_page(request, s, notice=f"{sender} is on your allow list.")

    def _password_form(self, s: sessions.Session, error: str = "", status: int = 200) -> web.Response:
        return self._page("password.html", s, status, error=error, min_length=MIN_LENGTH,
                          max_length=MAX_LENGTH)

    async def password_page(self, request: web.Request, s: sessions.Session) -> web.Response:
        return self._password_form(s)

    async def change_password(self, request: web.Request, s: sessions.Session) -> web.StreamResponse:
        """Checks the current password like a sign-in (same per-client and per-account limits),
        stores the new one hashed, and ends every other session: the new password bumps the
        user's session version, and only this browser gets a session with the new version."""
        form = await request.post()
        current, new = str(form.get("current", "")), str(form.get("new", ""))
        if self._throttled(request.remote or "", time.time()):
            return self._password_form(s, "Too many attempts. Wait a few minutes.", 429)
        if new != str(form.get("confirm", "")):
            return self._password_form(s, "The new password and its repetition differ.", 400)
        try:
            check_policy(new)
        except PasswordError as exc:
            return self._password_form(s, f"The new password cannot be used: {exc}.", 400)
        if new == current:
            return self._password_form(s, "The new password must differ from the current one.", 400)
        result = await self.client.verify(s.tenant, s.address, current)
        if result.get("locked"):
            log.warning("password change locked after repeated failures", extra={"tenant": s.tenant})
            return self._password_form(s, "Too many attempts. Wait a few minutes.", 429)
        if not result.get("ok"):
            return self._password_form(s, "The current password is wrong.", 401)
        hashed = await asyncio.get_running_loop().run_in_executor(
            None, hash_password, new, self.settings.password_hash_cost)
        outcome = await self.client.command(s.tenant, s.address, "upsert", password_hash=hashed,
                                            session_version=s.session_version)
        if outcome.get("status") != "ok":
            # Not applied yet (or refused): it ends this session too once applied.
            return self._password_form(s, "Your password could not be changed right now. Try again.", 503)
        log.info("password changed", extra={"tenant": s.tenant, "component": "message-center"})
        user = await self.client.user(s.tenant, s.address)
        response = web.HTTPFound("/settings?" + urlencode({"done": "password"}))
        fresh = sessions.new_session(s.tenant, s.address, int(user["session_version"]), s.framed, time.time())
        self._set_session(response, fresh)
        return response

    # -- links in digests -------------------------------------------------------------------

    async def release_link(self, request: web.Request) -> web.Response:
        """GET shows what will happen; POST releases (link scanners only GET, so they release nothing)."""
        token = request.match_info["token"]
        try:
            tenant_id, claims = signed_links.verify(self.keyring, token, "release")
            address = normalize_address(str(claims["r"]))
            mid = str(claims["m"])
        except (signed_links.LinkError, KeyError, SettingsError) as exc:
            return render("error.html", 400, title="This link cannot be used",
                          message=f"The release link is not valid ({exc}). Open your quarantine to "
                                  "release the message.")
        tenant = self.tenants.for_address(address)
        if tenant is None or tenant.id != tenant_id or not _MESSAGE_ID_RE.match(mid):
            return render("error.html", 400, title="This link cannot be used",
                          message="The release link is not valid for this address.")
        request["tenant"] = tenant.id
        try:
            if request.method == "GET":
                found = await self.client.message(tenant.id, address, mid)
                return render("release_link.html", entry=found[0] if found else None, token=token, message="" if found else STATUS_TEXT["already_released"])
            outcome = await self.client.act(tenant.id, address, mid, "release")
        except MailboxUnavailable:
            return render("error.html", 503, title="Try again shortly",
                          message="Your quarantine is not reachable right now.")
        status = outcome.get("status", "")
        return render("release_link.html", 200 if status in ("released", "already_released") else 409,
                      entry=None, token=token,
                      message=STATUS_TEXT.get(status, status))
