"""The delivered-log's keys on local disk (sinks.delivered_keys), loaded per partition."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError
from kafka import KafkaProducer

from postwarden.local_services import free_port
from postwarden.topics import DELIVERED
from sinks.delivered_keys import DeliveredKeys
from sinks.delivery_log import DeliveryOutcome, load_partitions, log_key


def test_keys_are_kept_in_rocksdb_files_and_removed_with_them(tmp_path):
    keys = DeliveredKeys(tmp_path / "delivered-0.db")
    keys.add(log_key("<a@x>", "alice@example.com"))
    keys.add_all([log_key("<b@x>", "bob@example.com").encode()])
    assert log_key("<a@x>", "alice@example.com") in keys
    assert log_key("<b@x>", "bob@example.com") in keys
    assert log_key("<a@x>", "bob@example.com") not in keys
    assert any((tmp_path / "delivered-0.db").iterdir())
    keys.remove()
    assert not (tmp_path / "delivered-0.db").exists()


def write_log(bootstrap: str, records: list[tuple[int, bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all")
    try:
        for partition, key, value in records:
            producer.send(DELIVERED.name, key=key, value=value, partition=partition)
        producer.flush(30)
    finally:
        producer.close()


def test_a_partition_is_loaded_with_its_own_outcomes_only(broker, tmp_path):
    outcome = DeliveryOutcome("example", "delivered", time.time(), "mx:25").encode()
    write_log(broker.bootstrap, [
        (0, b"<1@x>|a@example.com", outcome),
        (1, b"<2@x>|b@example.com", outcome),
        (0, b"<3@x>|c@example.com", b"not an outcome"),
        (0, b"<4@x>|d@example.com", outcome),
    ])
    done = asyncio.run(load_partitions([broker.bootstrap], [0],
                                       lambda p: DeliveredKeys(tmp_path / f"delivered-{p}.db")))
    assert list(done) == [0]
    assert "<1@x>|a@example.com" in done[0] and "<4@x>|d@example.com" in done[0]
    assert "<2@x>|b@example.com" not in done[0] and "<3@x>|c@example.com" not in done[0]


def test_an_unreachable_broker_leaves_no_half_loaded_keys(tmp_path):
    opened: list[Path] = []

    def open_keys(partition: int) -> DeliveredKeys:
        opened.append(tmp_path / f"delivered-{partition}.db")
        return DeliveredKeys(opened[-1])

    async def load() -> None:
        await asyncio.wait_for(load_partitions([f"127.0.0.1:{free_port()}"], [0, 1], open_keys), 60)

    with pytest.raises(KafkaError):
        asyncio.run(load())
    assert len(opened) == 2 and not any(p.exists() for p in opened)
