"""The ingest node process: SMTP listener, publisher, health endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiosmtpd.smtp import SMTP
from prometheus_client import Gauge

from ingest.publisher import InboundPublisher
from ingest.smtp_handler import IngestHandler
from postwarden.config import Settings
from postwarden.health import HealthServer

log = logging.getLogger(__name__)

SESSIONS = Gauge("postwarden_ingest_sessions", "SMTP sessions in progress")


class IngestNode:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.publisher = InboundPublisher(
            settings.bootstrap_list, settings.max_message_size, settings.produce_timeout
        )
        self.handler = IngestHandler(
            settings.tenants(), self.publisher, settings.smtp_hostname, settings.node_name
        )
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[SMTP] = set()
        self._health: HealthServer | None = None

    def _make_session(self) -> SMTP:
        node = self

        class TrackedSMTP(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                node._sessions.add(self)
                SESSIONS.inc()
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                if self in node._sessions:
                    node._sessions.discard(self)
                    SESSIONS.dec()
                super().connection_lost(exc)

        return TrackedSMTP(
            self.handler,
            hostname=self.settings.smtp_hostname,
            ident="Postwarden ESMTP",
            data_size_limit=self.settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
        )

    async def start(self) -> None:
        if not self.settings.bootstrap_list:
            raise SystemExit("postwarden ingest: POSTWARDEN_BOOTSTRAP_SERVERS is not set")
        await self.publisher.start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make_session, self.settings.smtp_host, self.settings.smtp_port, reuse_address=True
        )
        if self.settings.health_port:
            self._health = HealthServer(self.settings.health_host, self.settings.health_port,
                                        lambda: self.publisher.ready)
            await self._health.start()
        log.info("ingest node listening", extra={"component": "ingest",
                                                 "status": f"port {self.settings.smtp_port}"})

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop accepting, let sessions in progress finish, then close the producer."""
        if self._server is not None:
            self._server.close()
        deadline = asyncio.get_running_loop().time() + drain_seconds
        while self._sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        if self._health:
            await self._health.stop()
        await self.publisher.stop()


async def run(settings: Settings) -> None:
    node = IngestNode(settings)
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.stop()
