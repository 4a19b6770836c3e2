"""Outbound SMTP to a tenant's downstream mailbox servers.

Servers are tried in priority order (lowest first); a server that cannot be
reached, times out, defers (4xx) or cannot give the TLS the tenant requires
makes the relay try the next one. A 5xx reply is the downstream's final word
and is not retried elsewhere. Connections are pooled per server and reused
for later messages; a semaphore per server caps how many are open at once.

TLS: "none" never upgrades; "opportunistic" upgrades when the server offers
STARTTLS; "required" refuses to send in the clear. Certificates are not
verified (mailbox servers on private networks mostly carry self-signed ones);
the point of "required" is that the content is never sent unencrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass

import aiosmtplib

from postwarden.config import Downstream

log = logging.getLogger(__name__)

IDLE_SECONDS = 30.0


@dataclass(frozen=True)
class Outcome:
    kind: str  # delivered | temporary | permanent
    reply: str  # "250 2.0.0 ok", "451 4.3.0 ...", or what went wrong
    destination: str  # host:port that gave the reply ("" when none was reached)

    @property
    def status(self) -> str:
        """RFC 3463 status code of the reply (derived from the SMTP code if absent)."""
        parts = self.reply.split()
        if len(parts) > 1 and parts[1][:1] in "245" and parts[1].count(".") == 2:
            return parts[1]
        return {"delivered": "2.0.0", "permanent": "5.0.0"}.get(self.kind, "4.0.0")


class _TlsUnavailable(Exception):
    pass


@dataclass
class _Idle:
    conn: aiosmtplib.SMTP
    since: float


class SmtpRelay:
    def __init__(self, local_hostname: str, timeout: float) -> None:
        self.local_hostname = local_hostname
        self.timeout = timeout
        self._idle: dict[tuple[str, int], list[_Idle]] = {}
        self._limits: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    async def deliver(self, downstream: list[Downstream], mail_from: str, recipient: str,
                      raw: bytes) -> Outcome:
        last = Outcome("temporary", "451 4.4.1 no downstream server configured", "")
        for server in sorted(downstream, key=lambda d: d.priority):
            outcome = await self._deliver_to(server, mail_from, recipient, raw)
            if outcome.kind != "temporary":
                return outcome
            last = outcome
        return last

    async def _deliver_to(self, server: Downstream, mail_from: str, recipient: str,
                          raw: bytes) -> Outcome:
        dest = f"{server.host}:{server.port}"
        key = (server.host, server.port)
        limit = self._limits.setdefault(key, asyncio.Semaphore(server.max_connections))
        async with limit:
            for pooled_try in (True, False):
                conn = self._take_idle(key) if pooled_try else None
                reused = conn is not None
                try:
                    if conn is None:
                        conn = await self._connect(server)
                    errors, reply = await conn.sendmail(mail_from, [recipient], raw)
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    refused = exc.recipients[0]
                    self._keep(key, conn)
                    return _classify(refused.code, refused.message, dest)
                except aiosmtplib.SMTPResponseException as exc:
                    await _close(conn)
                    return _classify(exc.code, exc.message, dest)
                except _TlsUnavailable as exc:
                    await _close(conn)
                    return Outcome("temporary", f"451 4.7.10 {exc}", dest)
                except (aiosmtplib.SMTPTimeoutError, asyncio.TimeoutError):
                    await _close(conn)
                    return Outcome("temporary", f"451 4.4.2 timed out after {self.timeout:g}s", dest)
                except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                    await _close(conn)
                    if reused:
                        continue  # the server dropped an idle pooled connection: open a fresh one
                    return Outcome("temporary", f"451 4.4.2 connection lost: {exc}", dest)
                except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
                    await _close(conn)
                    return Outcome("temporary", f"451 4.4.1 cannot connect: {exc}", dest)
                self._keep(key, conn)
                if errors:  # one recipient, so a refusal here means that one
                    code, message = next(iter(errors.values()))
                    return _classify(code, message, dest)
                return Outcome("delivered", f"250 {reply}".strip(), dest)
        raise AssertionError("unreachable")

    async def _connect(self, server: Downstream) -> aiosmtplib.SMTP:
        conn = aiosmtplib.SMTP(hostname=server.host, port=server.port, timeout=self.timeout,
                               local_hostname=self.local_hostname, start_tls=False,
                               validate_certs=False, tls_context=self._tls)
        await conn.connect()
        try:
            await conn.ehlo()
            if server.tls != "none" and conn.supports_extension("starttls"):
                await conn.starttls(tls_context=self._tls)
                await conn.ehlo()
            elif server.tls == "required":
                raise _TlsUnavailable("STARTTLS required but not offered by the server")
        except BaseException:
            await _close(conn)
            raise
        return conn

    def _take_idle(self, key: tuple[str, int]) -> aiosmtplib.SMTP | None:
        pool = self._idle.get(key)
        now = time.monotonic()
        while pool:
            idle = pool.pop()
            if now - idle.since < IDLE_SECONDS and idle.conn.is_connected:
                return idle.conn
            asyncio.ensure_future(_close(idle.conn))
        return None

    def _keep(self, key: tuple[str, int], conn: aiosmtplib.SMTP) -> None:
        if conn.is_connected:
            self._idle.setdefault(key, []).append(_Idle(conn, time.monotonic()))

    async def close(self) -> None:
        pools, self._idle = self._idle, {}
        for pool in pools.values():
            for idle in pool:
                await _close(idle.conn, polite=True)


def _classify(code: int, message: str, dest: str) -> Outcome:
    reply = f"{code} {' '.join(str(message).split())}"
    if 500 <= code < 600:
        return Outcome("permanent", reply, dest)
    return Outcome("temporary", reply, dest)


async def _close(conn: aiosmtplib.SMTP | None, polite: bool = False) -> None:
    if conn is None:
        return
    with contextlib.suppress(Exception):
        if polite and conn.is_connected:
            await asyncio.wait_for(conn.quit(), 2)
    with contextlib.suppress(Exception):
        conn.close()
