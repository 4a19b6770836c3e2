"""SMTP phase hooks: tenant routing at RCPT, publish-then-answer at DATA."""

from __future__ import annotations

import logging
import time
from email.utils import formatdate

from aiosmtpd.smtp import SMTP, Envelope as SmtpEnvelope, Session
from prometheus_client import Counter

from ingest.publisher import InboundPublisher, PublishError
from postwarden.config import Tenants
from postwarden.records import Envelope, new_message_id

log = logging.getLogger(__name__)

MESSAGES = Counter("postwarden_ingest_messages_total", "Messages accepted (250) by the ingest node")
BYTES = Counter("postwarden_ingest_bytes_total", "Bytes of accepted messages")
REJECTS = Counter("postwarden_ingest_rejects_total", "Rejected commands and messages", ["reason"])


class Status:
    """Replies as SMTP codes with enhanced status codes (RFC 3463)."""

    RELAY_DENIED = "550 5.7.1 Relaying denied: this server does not accept mail for that domain"
    NETWORK_DENIED = "550 5.7.1 Relaying denied: your network may not relay to this domain"
    OTHER_TENANT = "451 4.5.3 Recipients of another provider: send them in a separate transaction"
    BAD_ADDRESS = "501 5.1.3 Bad recipient address syntax"
    TEMPFAIL = "451 4.3.0 Temporary failure, message not queued: please retry later"
    NO_RECIPIENTS = "554 5.5.1 No valid recipients"

    @staticmethod
    def queued(message_id: str) -> str:
        return f"250 2.0.0 Ok: queued as {message_id}"


class IngestHandler:
    def __init__(self, tenants: Tenants, publisher: InboundPublisher, hostname: str,
                 node_name: str) -> None:
        self.tenants = tenants
        self.publisher = publisher
        self.hostname = hostname
        self.node_name = node_name

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if "@" not in address:
            REJECTS.labels("bad_address").inc()
            return Status.BAD_ADDRESS
        tenant = self.tenants.for_address(address)
        if tenant is None:
            REJECTS.labels("relay_denied").inc()
            return Status.RELAY_DENIED
        if not tenant.allows_relay_from(_client_ip(session)):
            REJECTS.labels("network_denied").inc()
            return Status.NETWORK_DENIED
        current = getattr(envelope, "tenant_id", None)
        if current is not None and current != tenant.id:
            REJECTS.labels("other_tenant").inc()
            return Status.OTHER_TENANT
        envelope.tenant_id = tenant.id  # type: ignore[attr-defined]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        tenant_id = getattr(envelope, "tenant_id", None)
        if tenant_id is None or not envelope.rcpt_tos:
            return Status.NO_RECIPIENTS
        message_id = new_message_id()
        received_at = time.time()
        tls = session.ssl is not None
        raw = self._received_header(session, message_id, received_at, tls) + _as_bytes(envelope.original_content)
        meta = Envelope(
            message_id=message_id,
            tenant=tenant_id,
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            client_ip=_client_ip(session),
            helo=session.host_name or "",
            tls=tls,
            received_at=received_at,
            size=len(raw),
            ingest_node=self.node_name,
        )
        try:
            await self.publisher.publish(meta, raw)
        except PublishError as exc:
            REJECTS.labels("broker_unavailable").inc()
            log.warning("not queued, answered 451", extra={
                "message_id": message_id, "tenant": tenant_id, "reason": str(exc)[:200]})
            return Status.TEMPFAIL
        MESSAGES.inc()
        BYTES.inc(len(raw))
        log.info("queued", extra={"message_id": message_id, "tenant": tenant_id,
                                  "count": len(meta.rcpt_tos)})
        return Status.queued(message_id)

    def _received_header(self, session: Session, message_id: str, when: float, tls: bool) -> bytes:
        helo = _header_safe(session.host_name or "unknown")
        protocol = "ESMTPS" if tls else "ESMTP"
        line = (
            f"Received: from {helo} ([{_client_ip(session)}])\r\n"
            f"\tby {self.hostname} (Postwarden) with {protocol} id {message_id};\r\n"
            f"\t{formatdate(when)}\r\n"
        )
        return line.encode("ascii", "replace")


def _client_ip(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""


def _header_safe(value: str) -> str:
    # HELO text is attacker-controlled: keep it on one line of printable ASCII.
    return "".join(ch if 32 < ord(ch) < 127 else "?" for ch in value)[:255]


def _as_bytes(content: bytes | str | None) -> bytes:
    if content is None:
        return b""
    return content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
