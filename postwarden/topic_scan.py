"""Reading assigned partitions to their end, for the operator views of `postwarden queue`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition


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
