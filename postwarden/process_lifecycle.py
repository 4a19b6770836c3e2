"""How every long-running Postwarden process starts, reports health and stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Protocol

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from postwarden.config import Settings
from postwarden.health import HealthServer

log = logging.getLogger(__name__)


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets: the one way a process is asked to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


class Service(Protocol):
    @property
    def ready(self) -> bool: ...

    async def run(self, stop: asyncio.Event) -> None: ...


async def serve(settings: Settings, service: Service) -> None:
    """Runs ``service`` until a stop signal, with /healthz, /readyz and /metrics beside it."""
    stop = stop_on_signals()
    health = None
    if settings.health_port:
        health = HealthServer(settings.health_host, settings.health_port, lambda: service.ready)
        await health.start()
    try:
        await service.run(stop)
    finally:
        if health:
            await health.stop()


class PartitionOwner(Protocol):
    async def assigned(self, partitions: set) -> None: ...

    async def revoked(self, partitions: set) -> None: ...


class RebalanceRelay(ConsumerRebalanceListener):
    """Hands aiokafka's rebalance callbacks to the object that keeps per-partition state."""

    def __init__(self, owner: PartitionOwner) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked) -> None:
        await self.owner.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        await self.owner.assigned(set(assigned))


async def start_when_reachable(client, stop: asyncio.Event) -> None:
    """Starts an aiokafka client, retrying while the broker is down, until ``stop``.

    A sink that starts before its broker must wait for it, not exit: the
    supervisor (or Kubernetes) would only restart it into the same state.
    """
    while not stop.is_set():
        try:
            await client.start()
            return
        except KafkaError as exc:
            log.warning("broker not available, retrying", extra={"reason": str(exc)[:300]})
            await asyncio.sleep(2.0)
