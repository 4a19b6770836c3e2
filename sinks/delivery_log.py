"""The delivered-log: the final outcome of each (message id, recipient), kept on a topic.

The delivery sink writes an outcome with acks=all right after the downstream
server's 250 (or the bounce) and before committing the source offset, and
checks it before every attempt. A worker that restarts, or is killed between
that write and the commit, re-reads the same records and finds them done. A
kill between the 250 and the log's ack delivers once more: SMTP cannot make
that window zero (RFC 1047), only short.

Placement makes this work across many delivery pods: mail.deliver is keyed by
tenant, the retry tiers and the delivered-log are written to the same partition
number as their source record, and the sink's consumer group uses the range
assignor, so partition p of every delivery topic belongs to one pod at a time,
and that pod loads partition p of the log when it is assigned. It keeps one
key per delivered recipient of the partitions it owns, for the topic's
retention (longer than any record can be replayed), on local disk
(sinks.delivered_keys).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from postwarden.records import RecordError, _Record
from postwarden.topics import DELIVERED
from sinks.delivered_keys import DeliveredKeys


@dataclass(frozen=True, slots=True)
class DeliveryOutcome(_Record):
    """Value on mail.delivered, key 'message id|recipient'."""

    tenant: str
    outcome: str  # delivered | bounced
    at: float
    destination: str


def log_key(message_id: str, recipient: str) -> str:
    return f"{message_id}|{recipient}"


async def load_partitions(bootstrap: list[str], partitions: list[int],
                          open_keys: Callable[[int], DeliveredKeys], quiet_ms: int = 300,
                          security: Mapping[str, Any] | None = None) -> dict[int, DeliveredKeys]:
    """Every key written to these partitions of the log, in ``open_keys(partition)``.

    Reads until the reported end and then until a poll comes back empty: some
    brokers report the end of the log too early (see notes on Tansu).
    """
    done = {p: open_keys(p) for p in partitions}
    try:
        await _read_into(bootstrap, done, quiet_ms, security)
    except BaseException:
        for keys in done.values():
            keys.remove()
        raise
    return done


async def _read_into(bootstrap: list[str], done: dict[int, DeliveredKeys], quiet_ms: int,
                     security: Mapping[str, Any] | None) -> None:
    if not done:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                client_id="postwarden-delivered-log", **(security or {}))
    await consumer.start()
    try:
        tps = [TopicPartition(DELIVERED.name, p) for p in done]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=quiet_ms, max_records=10_000)
            for tp, records in batch.items():
                done[tp.partition].add_all(r.key for r in records if _is_outcome(r))
            caught_up = all([await consumer.position(tp) >= ends[tp] for tp in tps])
            if not batch and caught_up:
                return
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), 10)


def _is_outcome(record) -> bool:
    if record.key is None or record.value is None:
        return False
    try:
        DeliveryOutcome.decode(record.value)
    except RecordError:
        return False
    return True
