"""End offsets of changelog partitions, confirmed by reading their last batch.

Tansu answers ListOffsets(latest) with the base offset of a partition's last
batch + 1 instead of its high watermark. Faust's table recovery reads up to
that offset, so a recovered table lost every record of the last batch but the
first (tests/streams/test_changelog_recovery.py). One-record batches on the
changelogs avoided it at the cost of a produce request per table write; reading
the batch at that offset gives the true end instead. On a broker without the
bug the read only confirms what ListOffsets said.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

# Bounds the wait for a last batch that never comes (compacted away on a real Kafka).
READ_TIMEOUT = 5.0


async def confirmed_ends(bootstrap: list[str], security: Mapping[str, Any],
                         ends: Mapping[TP, int | None], max_record_bytes: int) -> dict[TP, int | None]:
    out = dict(ends)
    pending = {TopicPartition(tp.topic, tp.partition): end for tp, end in ends.items() if end}
    if not pending:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
        client_id="postwarden-changelog-ends", fetch_max_wait_ms=100,
        max_partition_fetch_bytes=max_record_bytes, fetch_max_bytes=max(52_428_800, max_record_bytes),
        **security)
    await consumer.start()
    try:
        consumer.assign(list(pending))
        for tp, end in pending.items():
            consumer.seek(tp, end - 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT
        while pending and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=int(max(0.0, deadline - loop.time()) * 1000))
            for tp, records in batches.items():
                if records and tp in pending:
                    # A fetch returns whole batches: the last record read ends the batch.
                    key = TP(tp.topic, tp.partition)
                    out[key] = max(pending.pop(tp), records[-1].offset + 1)
    finally:
        await consumer.stop()
    return out
