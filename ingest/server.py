"""The ingest node process: SMTP listener, publisher, health endpoint, graceful drain."""

from __future__ import annotations

import asyncio
import logging

from ingest.limits import ConnectionLimits, MessageRate
from ingest.publisher import RECORD_OVERHEAD, InboundPublisher
from ingest.session import IngestSMTP, SessionRegistry, session_factory
from ingest.smtp_handler import IngestHandler
from ingest.tls import server_context
from postwarden.config import ConfigError, Settings
from postwarden.health import HealthServer
from postwarden.kafka_security import client_kwargs
from postwarden.topics import INBOUND_MAX_RECORD_BYTES
from postwarden.process_lifecycle import stop_on_signals

log = logging.getLogger(__name__)

# Time a client gets to send its PROXY header (aiosmtpd warns below 3 s).
PROXY_HEADER_TIMEOUT = 5.0


class IngestNode:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        tenants = settings.tenants()
        self.tls_context = server_context(settings)
        needs_tls = [t.id for t in tenants.all if t.require_tls or t.auth]
        if needs_tls and self.tls_context is None:
            raise ConfigError(
                f"tenants {', '.join(needs_tls)} require TLS or use SMTP AUTH, but "
                "POSTWARDEN_SMTP_TLS_CERT_FILE and _KEY_FILE are not set")
        if settings.max_message_size + RECORD_OVERHEAD > INBOUND_MAX_RECORD_BYTES:
            raise ConfigError(
                f"POSTWARDEN_MAX_MESSAGE_SIZE={settings.max_message_size} does not fit in a "
                f"mail.inbound record (at most {INBOUND_MAX_RECORD_BYTES - RECORD_OVERHEAD} bytes)")
        self.publisher = InboundPublisher(
            settings.bootstrap_list, settings.max_message_size, settings.produce_timeout,
            client_kwargs(settings),
        )
        self.handler = IngestHandler(
            tenants, self.publisher, settings.smtp_hostname, settings.node_name,
            max_recipients=settings.smtp_max_recipients,
            max_invalid_recipients=settings.smtp_max_invalid_recipients,
            rate=MessageRate(settings.smtp_messages_per_ip_per_minute),
            auth_enabled=any(t.auth for t in tenants.all),
        )
        self.registry = SessionRegistry(
            ConnectionLimits(settings.smtp_max_connections, settings.smtp_max_connections_per_ip),
            tenants,
        )
        self._server: asyncio.base_events.Server | None = None
        self._health: HealthServer | None = None

    @property
    def sessions(self) -> set[IngestSMTP]:
        return self.registry.sessions

    def _session_factory(self):
        s = self.settings
        return session_factory(
            self.handler, self.registry,
            line_length=s.smtp_max_line_length,
            data_timeout=s.smtp_data_timeout,
            hostname=s.smtp_hostname,
            ident="Postwarden ESMTP",
            data_size_limit=s.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=self.tls_context,
            timeout=s.smtp_command_timeout,
            auth_require_tls=True,
            proxy_protocol_timeout=PROXY_HEADER_TIMEOUT if s.proxy_protocol else None,
        )

    async def start(self) -> None:
        if not self.settings.bootstrap_list:
            raise SystemExit("postwarden ingest: POSTWARDEN_BOOTSTRAP_SERVERS is not set")
        # aiosmtpd puts the client's address into every log line, warnings included;
        # our own log lines say what happened with message and tenant ids instead.
        logging.getLogger("mail.log").setLevel(logging.CRITICAL + 1)
        asyncio.get_running_loop().set_exception_handler(_log_loop_error)
        await self.publisher.start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._session_factory(), self.settings.smtp_host, self.settings.smtp_port,
            reuse_address=True, backlog=1024,
        )
        if self.settings.health_port:
            self._health = HealthServer(self.settings.health_host, self.settings.health_port,
                                        lambda: self.publisher.ready and not self.handler.draining)
            await self._health.start()
        log.info("ingest node listening", extra={"component": "ingest",
                                                 "status": f"port {self.settings.smtp_port}"})

    async def stop(self, drain_seconds: float | None = None) -> None:
        """Stop accepting; close idle sessions with 421; let transactions finish, then close."""
        if drain_seconds is None:
            drain_seconds = self.settings.smtp_drain_seconds
        self.handler.draining = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_seconds
        while self.sessions and loop.time() < deadline:
            for session in list(self.sessions):
                if not session.in_transaction:
                    session.close_for_shutdown()
            await asyncio.sleep(0.05)
        if self.sessions:
            log.warning("closing sessions still in a transaction", extra={
                "component": "ingest", "count": len(self.sessions)})
        for session in list(self.sessions):
            session.close_for_shutdown()
        await asyncio.sleep(0)
        if self._health:
            await self._health.stop()
        await self.publisher.stop()


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    # The default handler prints the transport, and with it the peer's address.
    exc = context.get("exception")
    log.error("event loop error", extra={"component": "ingest",
                                         "reason": type(exc).__name__ if exc else "unknown"})


async def run(settings: Settings) -> None:
    node = IngestNode(settings)
    await node.start()
    stop = stop_on_signals()
    await stop.wait()
    await node.stop()
