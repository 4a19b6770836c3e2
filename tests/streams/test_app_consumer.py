"""The worker's Kafka consumer waits at most POSTWARDEN_CONSUMER_FETCH_WAIT_MS per fetch.

Faust hard-codes 1500 ms; on a broker that does not answer a waiting fetch when
data arrives (Tansu) that is added to every agent hop.
"""

from __future__ import annotations

import asyncio

import pytest
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import TP, Message
from yarl import URL

from postwarden.config import ConfigError, Settings, load_settings
from postwarden.topics import DELIVER
from streams import app as app_module


def test_fetch_wait_reaches_the_fetcher_of_the_worker_consumer(broker, monkeypatch):
    monkeypatch.setattr(app_module, "settings", Settings(consumer_fetch_wait_ms=37))

    async def main() -> int:
        transport = app_module._Transport([URL(f"kafka://{broker.bootstrap}")], app_module.app)
        consumer = app_module.app.consumer._thread._create_worker_consumer(transport)
        await consumer.start()
        try:
            return consumer._fetcher._fetch_max_wait_ms
        finally:
            await consumer.stop()

    assert asyncio.run(asyncio.wait_for(main(), 30)) == 37


def test_fetch_wait_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="POSTWARDEN_CONSUMER_FETCH_WAIT_MS"):
        load_settings({"POSTWARDEN_CONSUMER_FETCH_WAIT_MS": "0"})


@pytest.mark.parametrize("committed", [None, 37])
def test_commit_never_passes_a_message_an_actor_is_still_processing(committed, monkeypatch):
    # Concurrent actors ack out of order: 38 and 39 are done while 37 is still running.
    consumer = app_module.app.consumer
    monkeypatch.setattr(app_module.app.topics, "acks_enabled_for", lambda topic: True)
    tp = TP("mail.inbound", 0)
    consumer._committed_offset[tp] = committed
    messages = {o: Message("mail.inbound", 0, o, 0.0, 0, {}, b"k", b"v", None, tp=tp) for o in (37, 38, 39)}
    try:
        for m in messages.values():
            consumer.track_message(m)
        assert consumer.ack(messages[38]) and consumer.ack(messages[39])
        assert consumer._new_offset(tp) is None
        consumer.ack(messages[37])
        assert consumer._new_offset(tp) == 40
    finally:
        consumer._acked.pop(tp, None)
        consumer._acked_index.pop(tp, None)
        consumer._committed_offset.pop(tp, None)
        for m in messages.values():
            consumer._unacked_messages.discard(m)


def test_a_worker_logging_at_warning_keeps_the_root_logger_at_warning():
    import logging

    logger = logging.Logger("root-under-test")
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.WARNING)
    worker = app_module.app.conf.Worker(app_module.app, loglevel="warn")
    worker.on_setup_root_logger(logger, logging.WARNING)
    assert logger.level == logging.WARNING and len(logger.handlers) == 1


def test_a_fetched_message_reaches_the_agents_without_a_turn_of_the_event_loop():
    # Faust's way (four tasks and asyncio.wait per message) let every ready actor run
    # before the next message was handed on, which paced a busy worker.
    consumer = app_module.app.consumer

    async def main() -> tuple[list[str], list[str]]:
        delivered: list[str] = []
        turned: list[str] = []

        async def callback() -> None:
            delivered.append("message")

        asyncio.get_running_loop().call_soon(turned.append, "turn")
        async with asyncio.timeout(10):  # a scope, not a task: that would take a turn itself
            await consumer.wait_first(callback(), consumer.suspend_flow.wait())
        return delivered, list(turned)  # the loop's next turn comes after main returns

    # A running worker's flow is active (Faust suspends it only around a rebalance).
    app_module.app.flow_control.resume()
    try:
        assert asyncio.run(main()) == (["message"], [])
    finally:
        app_module.app.flow_control.suspend()


@pytest.mark.parametrize("suspended", ["suspend_flow", "flow_control"])
def test_a_delivery_during_a_rebalance_goes_fausts_interruptible_way(suspended, monkeypatch):
    # While a rebalance suspends the flow, a callback may block (flow control, a full
    # stream queue): Faust's wait_first must then race it against suspend_flow.
    consumer = app_module.app.consumer
    raced: list[int] = []

    async def fausts_wait_first(self, *coros, timeout=None):
        for coro in coros:
            coro.close()
        raced.append(len(coros))

    monkeypatch.setattr(kafka_driver.Consumer, "wait_first", fausts_wait_first)
    delivered: list[str] = []

    async def callback() -> None:
        delivered.append("message")

    async def main() -> None:
        await consumer.wait_first(callback(), consumer.suspend_flow.wait())

    app_module.app.flow_control.resume()
    if suspended == "suspend_flow":
        consumer.suspend_flow.set()
    else:
        app_module.app.flow_control.suspend()
    try:
        asyncio.run(main())
    finally:
        consumer.suspend_flow.clear()
        app_module.app.flow_control.suspend()
    assert raced == [2] and delivered == []


def test_send_hands_a_record_to_the_producer_without_yielding(broker, monkeypatch):
    # topic.send went through Faust's stampede-guarded maybe_start_producer, three
    # yields to the event loop per record, each behind every ready actor.
    deliver = app_module.topic(DELIVER)

    async def main() -> tuple[list[str], int]:
        transport = app_module._Transport([URL(f"kafka://{broker.bootstrap}")], app_module.app)
        producer = transport.create_producer(beacon=app_module.app.beacon)
        monkeypatch.setattr(type(app_module.app), "producer", producer)
        await producer.start()
        try:
            await (await app_module.send(deliver, b"t", b"first"))  # metadata is fetched once
            turned: list[str] = []
            asyncio.get_running_loop().call_soon(turned.append, "turn")
            future = await app_module.send(deliver, b"t", b"second")
            seen_before_ack = list(turned)
            metadata = await asyncio.wait_for(future, 30)
            return seen_before_ack, metadata.offset
        finally:
            await producer.stop()

    turned, offset = asyncio.run(asyncio.wait_for(main(), 60))
    assert turned == [] and offset == 1


@pytest.mark.parametrize("committed", [None, 3])
def test_the_seek_after_a_rebalance_fetches_dropped_records_again(broker, committed, monkeypatch):
    # Faust drops records it fetched for a partition that is not active yet or across a
    # rebalance, then seeks back to the committed offsets. Where the group had never
    # committed, aiokafka's seek did nothing and those records were skipped for good.
    from aiokafka import AIOKafkaProducer, TopicPartition

    tp = TopicPartition(DELIVER.name, 0)
    thread = app_module.app.consumer._thread

    async def in_this_thread(fun, *args, **kwargs):
        return await fun(*args, **kwargs)

    # Faust's own seek (perform_seek), with the consumer thread's work done in this one.
    monkeypatch.setattr(thread, "call_thread", in_this_thread)

    async def fetch(consumer, wanted: int) -> list[int]:
        offsets: list[int] = []
        deadline = asyncio.get_running_loop().time() + 5
        while len(offsets) < wanted and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                offsets.extend(r.offset for r in records)
        return offsets

    async def main() -> tuple[int | None, list[int], list[int]]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for n in range(5):
                await producer.send_and_wait(tp.topic, b"mail %d" % n, partition=tp.partition)
        finally:
            await producer.stop()
        transport = app_module._Transport([URL(f"kafka://{broker.bootstrap}")], app_module.app)
        consumer = thread._create_worker_consumer(transport)
        await consumer.start()
        saved, thread._consumer = thread._consumer, consumer
        try:
            consumer.assign([tp])
            dropped = await fetch(consumer, 5)
            if committed is not None:  # the first three were done
                await consumer.commit({tp: committed})
            await app_module.app.consumer.perform_seek()
            again = await fetch(consumer, 5 - (committed or 0))
            return app_module.app.consumer._committed_offset.get(tp), dropped, again
        finally:
            thread._consumer = saved
            app_module.app.consumer._committed_offset.pop(tp, None)
            app_module.app.consumer._read_offset.pop(tp, None)
            await consumer.stop()

    offset, dropped, again = asyncio.run(asyncio.wait_for(main(), 60))
    assert offset == committed and dropped == [0, 1, 2, 3, 4]
    assert again == list(range(committed or 0, 5))
