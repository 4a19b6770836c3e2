"""SMTP phase hooks: admission after PROXY, rate at MAIL, tenant routing at RCPT,
smuggling check and publish-then-answer at DATA."""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import Envelope as SmtpEnvelope, Session
from prometheus_client import Counter

from ingest.limits import MessageRate
from ingest.publisher import InboundPublisher, PublishError
from ingest.uncertain_attempts import UncertainAttempts, fingerprint
from postwarden.config import Tenants
from postwarden.records import Envelope, new_message_id

if TYPE_CHECKING:
    from aiosmtpd.proxy_protocol import ProxyData

    from ingest.session import IngestSMTP

log = logging.getLogger(__name__)

MESSAGES = Counter("postwarden_ingest_messages_total", "Messages accepted (250) by the ingest node")
BYTES = Counter("postwarden_ingest_bytes_total", "Bytes of accepted messages")


class Status:
    """Replies as SMTP codes with enhanced status codes (RFC 3463)."""

    RELAY_DENIED = "550 5.7.1 Relaying denied: this server does not accept mail for that domain"
    NETWORK_DENIED = "550 5.7.1 Relaying denied: your network may not relay to this domain"
    OTHER_TENANT = "451 4.5.3 Recipients of another provider: send them in a separate transaction"
    BAD_ADDRESS = "501 5.1.3 Bad recipient address syntax"
    TEMPFAIL = "451 4.3.0 Temporary failure, message not queued: please retry later"
    NO_RECIPIENTS = "554 5.5.1 No valid recipients"
    UNKNOWN_USER = "550 5.1.1 No such user here"
    TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients: send the rest in another transaction"
    TOO_MANY_INVALID = "421 4.7.0 Too many unknown recipients, closing connection"
    TLS_REQUIRED = "530 5.7.0 Must issue a STARTTLS command first: this domain requires TLS"
    RATE_LIMITED = "450 4.7.0 Too many messages from your address: slow down and retry later"
    SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
    BARE_NEWLINE = ("554 5.5.2 Message refused: bare CR or LF in message data "
                    "(every line must end with CRLF)")

    @staticmethod
    def queued(message_id: str) -> str:
        return f"250 2.0.0 Ok: queued as {message_id}"


_REASONS = {
    Status.RELAY_DENIED: "relay_denied",
    Status.NETWORK_DENIED: "network_denied",
    Status.OTHER_TENANT: "other_tenant",
    Status.BAD_ADDRESS: "bad_address",
    Status.TEMPFAIL: "broker_unavailable",
    Status.NO_RECIPIENTS: "no_recipients",
    Status.UNKNOWN_USER: "unknown_user",
    Status.TOO_MANY_RECIPIENTS: "too_many_recipients",
    Status.TOO_MANY_INVALID: "harvest",
    Status.TLS_REQUIRED: "tls_required",
    Status.RATE_LIMITED: "rate_limited",
    Status.SHUTTING_DOWN: "shutting_down",
    Status.BARE_NEWLINE: "bare_newline",
}


class IngestHandler:
    def __init__(self, tenants: Tenants, publisher: InboundPublisher, hostname: str,
                 node_name: str, *, max_recipients: int = 100, max_invalid_recipients: int = 20,
                 rate: MessageRate | None = None, auth_enabled: bool = False) -> None:
        self.tenants = tenants
        self.publisher = publisher
        self.hostname = hostname
        self.node_name = node_name
        self.max_recipients = max_recipients
        self.max_invalid_recipients = max_invalid_recipients
        self.rate = rate or MessageRate(0)
        self.auth_enabled = auth_enabled
        self.draining = False
        self.uncertain = UncertainAttempts()

    @staticmethod
    def reason_for(status: str) -> str | None:
        """The rejects-metric reason of one of our replies (None: not ours)."""
        return _REASONS.get(status)

    async def handle_PROXY(self, server: IngestSMTP, session: Session, envelope: SmtpEnvelope,
                           proxy_data: ProxyData) -> bool:
        # LOCAL (v2) and UNKNOWN (v1) headers carry no source: keep the socket peer.
        if proxy_data.src_addr is not None:
            server.client_ip = str(proxy_data.src_addr)
        return await server.admit()

    async def handle_EHLO(self, server: IngestSMTP, session: Session, envelope: SmtpEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        out = [r for r in responses if self.auth_enabled or not r.startswith("250-AUTH")]
        # aiosmtpd reads commands one at a time from a buffered stream, which is
        # exactly what RFC 2920 asks of a server; it just does not say so.
        out.insert(-1, "250-PIPELINING")
        out.insert(-1, "250-ENHANCEDSTATUSCODES")
        return out

    async def handle_MAIL(self, server: IngestSMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, mail_options: list[str]) -> str:
        if self.draining:
            _close_after_reply(server)
            return Status.SHUTTING_DOWN
        if not self.rate.allow(server.client_ip):
            return Status.RATE_LIMITED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: IngestSMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return Status.TOO_MANY_RECIPIENTS
        if "@" not in address:
            return Status.BAD_ADDRESS
        tenant = self.tenants.for_address(address)
        if tenant is None:
            return Status.RELAY_DENIED
        if not (tenant.allows_relay_from(server.client_ip) or server.auth_tenant is tenant):
            return Status.NETWORK_DENIED
        if tenant.require_tls and session.ssl is None:
            return Status.TLS_REQUIRED
        current = getattr(envelope, "tenant_id", None)
        if current is not None and current != tenant.id:
            return Status.OTHER_TENANT
        if not tenant.knows_recipient(address):
            server.invalid_recipients += 1
            if server.invalid_recipients > self.max_invalid_recipients:
                _close_after_reply(server)
                return Status.TOO_MANY_INVALID
            return Status.UNKNOWN_USER
        envelope.tenant_id = tenant.id  # type: ignore[attr-defined]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: IngestSMTP, session: Session, envelope: SmtpEnvelope) -> str:
        tenant_id = getattr(envelope, "tenant_id", None)
        if tenant_id is None or not envelope.rcpt_tos:
            return Status.NO_RECIPIENTS
        content = _as_bytes(envelope.original_content)
        if not _only_crlf(content):
            return Status.BARE_NEWLINE
        def attempt_key() -> bytes:
            return fingerprint(tenant_id, envelope.mail_from or "", envelope.rcpt_tos, content)

        # A retry of a transaction whose 451 may have been a lie keeps that attempt's id.
        attempt = attempt_key() if self.uncertain else None
        message_id = (attempt and self.uncertain.message_id(attempt)) or new_message_id()
        received_at = time.time()
        tls = session.ssl is not None
        raw = self._received_header(server, session, message_id, received_at, tls) + content
        meta = Envelope(
            message_id=message_id,
            tenant=tenant_id,
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            client_ip=server.client_ip,
            helo=session.host_name or "",
            tls=tls,
            received_at=received_at,
            size=len(raw),
            ingest_node=self.node_name,
        )
        try:
            await self.publisher.publish(meta, raw)
        except PublishError as exc:
            self.uncertain.remember(attempt or attempt_key(), message_id)
            log.warning("not queued, answered 451", extra={
                "message_id": message_id, "tenant": tenant_id, "reason": str(exc)[:200]})
            return Status.TEMPFAIL
        MESSAGES.inc()
        BYTES.inc(len(raw))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("queued", extra={"message_id": message_id, "tenant": tenant_id,
                                       "count": len(meta.rcpt_tos)})
        return Status.queued(message_id)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default reply and log line would carry the session's peer.
        log.error("SMTP session error", extra={"reason": type(error).__name__})
        return "451 4.3.0 Internal error, please retry later"

    def _received_header(self, server: IngestSMTP, session: Session, message_id: str,
                         when: float, tls: bool) -> bytes:
        helo = _header_safe(session.host_name or "unknown")
        protocol = ("ESMTP" if session.extended_smtp else "SMTP") + ("S" if tls else "") + (
            "A" if session.authenticated else "")
        line = (
            f"Received: from {helo} ([{server.client_ip}])\r\n"
            f"\tby {self.hostname} (Postwarden) with {protocol} id {message_id};\r\n"
            f"\t{formatdate(when)}\r\n"
        )
        return line.encode("ascii", "replace")


def _close_after_reply(server: IngestSMTP) -> None:
    # aiosmtpd writes the hook's reply before it next yields to the loop, so a
    # close scheduled now goes out after the reply, which close() still flushes.
    transport = server.transport
    if transport is not None:
        server.loop.call_soon(transport.close)


def _only_crlf(content: bytes) -> bool:
    # SMTP smuggling defence: aiosmtpd ends DATA only on CRLF.CRLF, but a bare
    # LF or CR kept in the message could end it early at a laxer server
    # downstream. Refusing them keeps the stored bytes untouched.
    crlf = content.count(b"\r\n")
    return content.count(b"\n") == crlf and content.count(b"\r") == crlf


def _header_safe(value: str) -> str:
    # HELO text is attacker-controlled: keep it on one line of printable ASCII.
    return "".join(ch if 32 < ord(ch) < 127 else "?" for ch in value)[:255]


def _as_bytes(content: Any) -> bytes:
    if content is None:
        return b""
    return content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
