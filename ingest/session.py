"""One SMTP connection: aiosmtpd's protocol plus connection-level policy.

aiosmtpd keeps per-transaction state in Session/Envelope and recreates the
Session after STARTTLS, so anything that must outlive STARTTLS (the real
client IP from the PROXY header, counters against harvesting and password
guessing, the tenant an AUTH login belongs to) lives on this object, which
the handler hooks receive as ``server``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, syntax
from prometheus_client import Counter, Gauge

from ingest.passwords import hash_password, verify_password

if TYPE_CHECKING:
    from ingest.limits import ConnectionLimits
    from postwarden.config import Tenant, Tenants

SESSIONS = Gauge("postwarden_ingest_sessions", "SMTP sessions in progress")
CONNECTIONS = Counter("postwarden_ingest_connections_total", "SMTP connections admitted")
REJECTS = Counter("postwarden_ingest_rejects_total", "Rejected commands and messages", ["reason"])

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
TIMEOUT = b"421 4.4.2 Timeout exceeded, closing connection\r\n"
SHUTTING_DOWN = b"421 4.3.2 Service shutting down, try again later\r\n"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_YOU = "421 4.7.0 Too many connections from your address, try again later"
MAX_AUTH_FAILURES = 3
TOO_MUCH_DATA = "552 5.3.4 Error: too much mail data"
LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")

# Replies aiosmtpd writes itself, classified for the rejects metric by prefix.
_BUILTIN_REASONS = (
    ("500 5.5.2 Line too long", "line_too_long"),
    ("500 Command line too long", "line_too_long"),
    ("552", "too_large"),
    ("530", "tls_required"),
    ("538", "tls_required"),
    ("535", "auth_failed"),
    ("421 4.4.2", "timeout"),
    ("5", "syntax"),
)


class IngestSMTP(SMTP):
    def __init__(self, handler: Any, *, registry: SessionRegistry, line_length: int,
                 data_timeout: float, **kwargs: Any) -> None:
        # aiosmtpd sizes its stream reader from this attribute inside __init__.
        self.line_length_limit = line_length
        self.registry = registry
        self.client_ip = ""
        self.auth_tenant: Tenant | None = None
        self.invalid_recipients = 0
        self.auth_failures = 0
        self.in_data = False
        self._admitted = False
        self._data_timeout = data_timeout
        self._pending_login: LoginPassword | None = None
        super().__init__(handler, authenticator=self._capture_login, **kwargs)

    @property
    def in_transaction(self) -> bool:
        return self.in_data or (self.envelope is not None and self.envelope.mail_from is not None)

    # --- connection lifecycle -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername")
            self.client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            self.registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)
        super().connection_lost(exc)

    async def _handle_client(self) -> None:
        # With PROXY protocol the real IP is known only in handle_PROXY, which admits there.
        if self._proxy_timeout is None and not await self.admit():
            return
        await super()._handle_client()

    async def admit(self) -> bool:
        """Counts this connection against the limits, or answers 421 and closes."""
        refused = self.registry.admit(self)
        if refused is None:
            return True
        REJECTS.labels(f"connections_{refused}").inc()
        self._writer.write(((TOO_MANY_CONNECTIONS if refused == "total" else TOO_MANY_FROM_YOU)
                            + "\r\n").encode())
        assert self.transport is not None
        self.transport.close()
        return False

    def _timeout_cb(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            REJECTS.labels("timeout").inc()
            self.transport.write(TIMEOUT)
        super()._timeout_cb()

    def close_for_shutdown(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(SHUTTING_DOWN)
            self.transport.close()

    # --- commands -----------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str) and status[:1] in ("4", "5") and status != AUTH_FAILED:
            REJECTS.labels(self.event_handler.reason_for(status) or _builtin_reason(status)).inc()
        await super().push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # Same checks and replies as aiosmtpd's DATA, but the body is read in
        # chunks up to each ".\r\n" instead of line by line: that loop was the
        # largest CPU cost per message. Only CRLF.CRLF ends the data.
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        # The whole transfer gets the data timeout; commands get the (shorter) idle timeout.
        self._reset_timeout(self._data_timeout)
        self.in_data = True
        try:
            content = await self._read_data()
        finally:
            self.in_data = False
            if self.transport is not None:
                self._reset_timeout()
        if isinstance(content, str):
            self._set_post_data_state()
            await self.push(content)
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> bytes | str:
        """The unstuffed message, or the error reply once the terminator has been read."""
        reader, limit = self._reader, self.data_size_limit or 0
        parts: list[bytes] = []
        size, too_big, at_line_start = 0, False, True
        while True:
            try:
                chunk = await reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:
                # No terminator within the reader's limit: take what was scanned and go on.
                chunk = await reader.readexactly(exc.consumed)
                ended = False
            except asyncio.IncompleteReadError:
                raise ConnectionResetError("connection closed during DATA") from None
            else:
                ended = chunk.endswith(b"\r\n.\r\n") or (at_line_start and chunk == b".\r\n")
            if ended:
                chunk = chunk[:-3]
            size += len(chunk)
            if limit and size > limit:
                too_big = True
                parts.clear()  # keep reading to the end, but not holding the data
            elif not too_big:
                parts.append(chunk)
            if ended:
                break
            at_line_start = chunk.endswith(b"\r\n")
        if too_big:
            return TOO_MUCH_DATA
        data = b"".join(parts)
        if len(data) > self.line_length_limit - 2 and max(
                map(len, data.split(b"\r\n"))) > self.line_length_limit - 2:
            return LINE_TOO_LONG
        # Dot-unstuffing (RFC 5321 4.5.2): every line starting with "." lost one.
        if data.startswith(b"."):
            data = data[1:]
        return data.replace(b"\r\n.", b"\r\n")

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # Fast path for the plain <local@domain> nearly every MTA sends; anything
        # else goes through aiosmtpd's full RFC 5322 parser.
        m = _SIMPLE_PATH.match(arg)
        if m is not None:
            return m.group(1), arg[m.end():].lstrip()
        return super()._getaddr(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        # aiosmtpd calls its authenticator synchronously; scrypt takes ~0.1 s of CPU,
        # so the authenticator only captures the credentials and the check runs in
        # a thread here, off the event loop.
        self._pending_login = None
        await super().smtp_AUTH(arg)
        login, self._pending_login = self._pending_login, None
        if login is None or self.session is None:
            return
        tenant = await asyncio.to_thread(self.registry.verify_login, login)
        if tenant is None:
            self.auth_failures += 1
            REJECTS.labels("auth_failed").inc()
            await self.push(AUTH_FAILED)
            if self.auth_failures >= MAX_AUTH_FAILURES and self.transport is not None:
                await self.push("421 4.7.0 Too many failed authentications, closing connection")
                self.transport.close()
            return
        self.session.authenticated = True
        self.session.auth_data = login
        self.auth_tenant = tenant
        await self.push(AUTH_OK)

    def _capture_login(self, server: SMTP, session: Any, envelope: Any, mechanism: str,
                       auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            self._pending_login = auth_data
        # "handled" keeps aiosmtpd from answering; smtp_AUTH above answers.
        return AuthResult(success=False, handled=True)


def _builtin_reason(status: str) -> str:
    for prefix, reason in _BUILTIN_REASONS:
        if status.startswith(prefix):
            return reason
    return "other"


class SessionRegistry:
    """The node's open sessions, the connection limits and the login directory."""

    def __init__(self, limits: ConnectionLimits, tenants: Tenants) -> None:
        self.limits = limits
        self.tenants = tenants
        self.sessions: set[IngestSMTP] = set()

    def add(self, session: IngestSMTP) -> None:
        self.sessions.add(session)
        SESSIONS.inc()

    def discard(self, session: IngestSMTP) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            SESSIONS.dec()
            if session._admitted:
                session._admitted = False
                self.limits.release(session.client_ip)

    def admit(self, session: IngestSMTP) -> str | None:
        refused = self.limits.admit(session.client_ip)
        if refused is None:
            session._admitted = True
            CONNECTIONS.inc()
        return refused

    def verify_login(self, login: LoginPassword) -> Tenant | None:
        username = login.login.decode("utf-8", "replace")
        password = login.password.decode("utf-8", "replace")
        found = self.tenants.for_login(username)
        if found is None:
            # Same cost as a real check, so timing does not tell which logins exist.
            verify_password(password, _unknown_login_hash())
            return None
        tenant, account = found
        return tenant if verify_password(password, account.password_hash) else None


@functools.cache
def _unknown_login_hash() -> str:
    return hash_password(os.urandom(16).hex())


def session_factory(handler: Any, registry: SessionRegistry, **kwargs: Any) -> Callable[[], IngestSMTP]:
    return lambda: IngestSMTP(handler, registry=registry, **kwargs)
