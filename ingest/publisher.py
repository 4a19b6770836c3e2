"""Publishes accepted mail to mail.inbound and knows whether the broker is reachable.

The ingest node may start while the broker is down (it must then answer 451,
not refuse connections), so the producer is started lazily and restarted in
the background until it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Histogram

from postwarden.kafka_security import tls_failure
from postwarden.records import Envelope
from postwarden.topics import INBOUND

log = logging.getLogger(__name__)

PRODUCE_SECONDS = Histogram(
    "postwarden_ingest_produce_seconds", "Time from DATA end to broker acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Headroom over the message size for the Received header and record overhead.
RECORD_OVERHEAD = 64 * 1024


class PublishError(Exception):
    """The broker did not acknowledge the record within the bounded wait."""


class InboundPublisher:
    def __init__(self, bootstrap: list[str], max_message_size: int, timeout: float,
                 security: Mapping[str, Any] | None = None) -> None:
        self._bootstrap = bootstrap
        self._security = security or {}
        # Why the broker refuses our TLS, if it does: logged once, and the reason of each 451.
        self._tls_failure: str | None = None
        self._max_request = max_message_size + RECORD_OVERHEAD
        self._timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task | None = None
        self._last_ok = 0.0
        self._closed = False

    @property
    def ready(self) -> bool:
        """True while the broker answered within the last few seconds."""
        return self._producer is not None and time.monotonic() - self._last_ok < 5.0

    async def start(self) -> None:
        self._watch = asyncio.create_task(self._watch_broker())

    async def stop(self) -> None:
        self._closed = True
        if self._watch:
            # aiokafka can swallow a cancellation during connect; the flag ends the loop then.
            self._watch.cancel()
            await asyncio.wait({self._watch}, timeout=self._timeout)
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), self._timeout)
            self._producer = None

    async def publish(self, envelope: Envelope, raw: bytes) -> None:
        """Returns only after acks=all; raises PublishError after the bounded wait."""
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._send(envelope, raw), self._timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            why = self._tls_failure
            if why is None and self._security.get("ssl_context") is not None:
                # The watcher may not have probed yet (a send right after start): the
                # client's "unable to bootstrap" would hide an untrusted certificate.
                why = await asyncio.to_thread(tls_failure, self._bootstrap, self._security)
            raise PublishError(why or f"{type(exc).__name__}: {exc}") from exc
        self._last_ok = time.monotonic()
        PRODUCE_SECONDS.observe(self._last_ok - started)

    async def _send(self, envelope: Envelope, raw: bytes) -> None:
        producer = await self._ensure_producer()
        await producer.send_and_wait(
            INBOUND.name, value=raw, key=envelope.message_id.encode(), headers=envelope.to_headers()
        )

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    client_id="postwarden-ingest",
                    acks="all",
                    enable_idempotence=False,
                    max_request_size=self._max_request,
                    request_timeout_ms=int(self._timeout * 1000),
                    linger_ms=1,
                    **self._security,
                )
                try:
                    await producer.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
                self._last_ok = time.monotonic()
        return self._producer

    async def _watch_broker(self) -> None:
        while not self._closed:
            try:
                producer = await asyncio.wait_for(self._ensure_producer(), self._timeout)
                if await asyncio.wait_for(producer.client.fetch_all_metadata(), 3.0):
                    self._last_ok = time.monotonic()
                    self._tls_failure = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker down: stay unready, keep trying
                log.debug("broker not reachable: %s", type(exc).__name__)
                why = await asyncio.to_thread(tls_failure, self._bootstrap, self._security)
                if why and why != self._tls_failure:
                    log.warning("cannot reach the broker", extra={"reason": why[:300]})
                self._tls_failure = why
            await asyncio.sleep(2.0)
