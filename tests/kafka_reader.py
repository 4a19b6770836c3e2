"""Reading topics back in tests with a plain consumer (no group, from the start)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition


def read_topic(bootstrap: str, topic: str, until: Callable[[list], bool], timeout: float = 30.0,
               security: Mapping[str, Any] | None = None) -> list:
    """All records of a topic, polling until ``until(records)`` holds or timeout passes.

    ``security``: postwarden.kafka_security.client_kwargs for a TLS/SASL broker."""
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=500, **(security or {}))
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + 10
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        consumer.seek_to_beginning()
        records: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
            if until(records):
                break
        return records
    finally:
        consumer.close()
