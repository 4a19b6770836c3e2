"""Writing a sink's own output records, which must land before its input offset moves."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)


async def send_until_acked(producer: AIOKafkaProducer, topic: str, key: bytes, value: bytes,
                           partition: int | None) -> None:
    """acks=all, retried with growing pauses until it succeeds: a sink that gave up here
    would have to commit past output it never wrote."""
    delay = 0.5
    while True:
        try:
            await producer.send_and_wait(topic, value=value, key=key, partition=partition)
            return
        except KafkaError as exc:
            log.warning("write failed, retrying", extra={"topic": topic, "reason": str(exc)[:300]})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
