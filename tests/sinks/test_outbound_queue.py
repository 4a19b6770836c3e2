"""The delivery sink's queue scans read only the new part of the delivered-log, and still
count exactly the mail without an outcome (sinks.outbound_queue)."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaError

from postwarden.local_services import free_port
from postwarden.topic_scan import BOOTSTRAP_TIMEOUT_MS
from postwarden.topics import DELIVERED
from sinks.delivery_log import DeliveryOutcome, log_key
from sinks.outbound_queue import DeliveredSeen, scan_queue
from tests.delivery_helpers import message, produce


def record_outcomes(bootstrap: str, messages) -> None:
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all")
    try:
        for m in messages:
            producer.send(DELIVERED.name, key=log_key(m.message_id, m.recipient).encode(), partition=0,
                          value=DeliveryOutcome(m.tenant, "delivered", time.time(), "mx").encode())
        producer.flush(30)
    finally:
        producer.close()


def waiting(index) -> set[str]:
    return {e.message_id for e in index.entries.values()}


def test_scans_read_the_delivered_log_incrementally(broker):
    first = [message(f"u{i}@acme.test") for i in range(3)]
    produce(broker.bootstrap, first)
    record_outcomes(broker.bootstrap, first[:2])
    seen = DeliveredSeen()
    assert waiting(scan_queue([broker.bootstrap], "delivery", seen=seen)) == {first[2].message_id}
    assert seen.positions[0] == 2  # the next scan starts after the two outcomes
    assert seen.done == {log_key(m.message_id, m.recipient) for m in first[:2]}

    later = message("late@acme.test")
    produce(broker.bootstrap, [later])
    record_outcomes(broker.bootstrap, [first[2]])
    index = scan_queue([broker.bootstrap], "delivery", seen=seen)
    assert waiting(index) == {later.message_id}
    assert seen.positions[0] == 3
    # A scan without memory reads the whole log and agrees.
    assert waiting(scan_queue([broker.bootstrap], "delivery")) == {later.message_id}


def test_a_scan_of_a_broker_that_is_gone_gives_up_within_its_bootstrap_timeout():
    # The delivery sink's periodic scan runs in a thread its process waits for on exit:
    # with kafka-python's 30 s a scan begun as the broker went away held a stopping sink.
    started = time.monotonic()
    with pytest.raises(KafkaError):
        scan_queue([f"127.0.0.1:{free_port()}"], "postwarden-delivery", [0])
    assert time.monotonic() - started < BOOTSTRAP_TIMEOUT_MS / 1000 + 5
