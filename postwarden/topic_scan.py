"""Reading assigned partitions to their end, for the operator views of `postwarden queue`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition

# A scan that cannot reach the broker gives up after these, not kafka-python's 30 s:
# the delivery sink's periodic scan runs in a thread its process waits for on exit,
# so a scan that began as the broker went away held a stopping sink for 30 s.
BOOTSTRAP_TIMEOUT_MS = 5_000
REQUEST_TIMEOUT_MS = 10_000


def scan_consumer(bootstrap: list[str], group_id: str,
                  security: Mapping[str, Any] | None = None) -> KafkaConsumer:
    """A consumer of ``group_id``'s committed offsets that never joins the group."""
    return KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id,
                         enable_auto_commit=False, auto_offset_reset="earliest",
                         client_id="postwarden-queue", consumer_timeout_ms=500,
                         bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
                         request_timeout_ms=REQUEST_TIMEOUT_MS, **(security or {}))


def records_until_end(consumer: KafkaConsumer, tps: list[TopicPartition], from_committed: bool,
                      timeout: float, starts: Mapping[TopicPartition, int] | None = None,
                      ) -> Iterator[tuple[TopicPartition, Any]]:
    """(partition, record) from the start, or the consumer group's committed offsets, or
    the offsets in ``starts``, to the end the broker reports; stops early at the timeout."""
    if not tps:
        return
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    if from_committed:
        for tp in tps:
            committed = consumer.committed(tp)
            if committed is not None:
                consumer.seek(tp, committed)
    for tp, offset in (starts or {}).items():
        consumer.seek(tp, offset)
    ends = consumer.end_offsets(tps)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=300, max_records=5000)
        for tp, records in batch.items():
            for record in records:
                yield tp, record
        # Some brokers report the end too early; an empty poll past it is the real end.
        if not batch and all(consumer.position(tp) >= ends[tp] for tp in tps):
            return
