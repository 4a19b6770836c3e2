"""The worker's Kafka consumer waits at most POSTWARDEN_CONSUMER_FETCH_WAIT_MS per fetch.

Faust hard-codes 1500 ms; on a broker that does not answer a waiting fetch when
data arrives (Tansu) that is added to every agent hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import TP, Message
from yarl import URL

from postwarden.config import ConfigError, Settings, load_settings
from postwarden.logs import JsonFormatter
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


def _consumer_thread_in_this_loop(monkeypatch):
    """Faust's consumer thread, with its work done in the test's own event loop."""
    thread = app_module.app.consumer._thread

    async def in_this_thread(fun, *args, **kwargs):
        return await fun(*args, **kwargs)

    monkeypatch.setattr(thread, "call_thread", in_this_thread)
    return thread


async def _produce(broker, tp: TopicPartition, n: int) -> list[int]:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        return [(await producer.send_and_wait(tp.topic, b"mail %d" % i, partition=tp.partition)).offset
                for i in range(n)]
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def _worker_consumer(broker, thread, tp: TopicPartition):
    """The worker's own Kafka consumer, assigned ``tp``, in place of the thread's."""
    transport = app_module._Transport([URL(f"kafka://{broker.bootstrap}")], app_module.app)
    consumer = thread._create_worker_consumer(transport)
    await consumer.start()
    saved, thread._consumer = thread._consumer, consumer
    try:
        consumer.assign([tp])
        yield consumer
    finally:
        thread._consumer = saved
        await consumer.stop()


@pytest.mark.parametrize("committed", [None, 3])
def test_the_seek_after_a_rebalance_fetches_dropped_records_again(broker, committed, monkeypatch):
    # Faust drops records it fetched for a partition that is not active yet or across a
    # rebalance, then seeks back to the committed offsets. Where the group had never
    # committed, aiokafka's seek did nothing and those records were skipped for good.
    tp = TopicPartition(DELIVER.name, 0)
    # Faust's own seek (perform_seek), with the consumer thread's work done in this loop.
    thread = _consumer_thread_in_this_loop(monkeypatch)

    async def fetch(consumer, wanted: int) -> list[int]:
        offsets: list[int] = []
        deadline = asyncio.get_running_loop().time() + 5
        while len(offsets) < wanted and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                offsets.extend(r.offset for r in records)
        return offsets

    async def main() -> tuple[int | None, list[int], list[int]]:
        await _produce(broker, tp, 5)
        async with _worker_consumer(broker, thread, tp) as consumer:
            try:
                dropped = await fetch(consumer, 5)
                if committed is not None:  # the first three were done
                    await consumer.commit({tp: committed})
                await app_module.app.consumer.perform_seek()
                again = await fetch(consumer, 5 - (committed or 0))
                return app_module.app.consumer._committed_offset.get(tp), dropped, again
            finally:
                app_module.app.consumer._committed_offset.pop(tp, None)
                app_module.app.consumer._read_offset.pop(tp, None)

    offset, dropped, again = asyncio.run(asyncio.wait_for(main(), 60))
    assert offset == committed and dropped == [0, 1, 2, 3, 4]
    assert again == list(range(committed or 0, 5))


@pytest.mark.parametrize("stale_fetches", [0, 1, 2])
def test_a_batch_fetched_before_the_seek_is_not_handed_on_after_it(broker, stale_fetches, monkeypatch, caplog):
    # A batch fetched before the seek to the committed offsets, handed on after it:
    # Faust marked the records between the committed offset and the batch's first one
    # done although nothing had processed them (a gap), and dropped them when they came
    # again because its read offset was past them. The batch is real records fetched
    # from the broker; only its late hand-over is staged. Without a stale fetch, a stale
    # record was being processed during the seek and set the read offset past the
    # committed one afterwards. A second stale fetch stands for a partition whose
    # committed record is gone, whose gap is then Faust's to mark.
    tp = TopicPartition(DELIVER.name, 0)
    faust_tp = TP(tp.topic, tp.partition)
    consumer = app_module.app.consumer
    thread = _consumer_thread_in_this_loop(monkeypatch)
    monkeypatch.setattr(app_module.app.topics, "acks_enabled_for", lambda topic: topic == tp.topic)
    monkeypatch.setattr(consumer, "_active_partitions", {faust_tp})

    async def main() -> tuple[int, list[list[int]], list[int | None]]:
        base = (await _produce(broker, tp, 10))[0]
        async with _worker_consumer(broker, thread, tp) as kafka:
            try:
                kafka.seek(tp, base)
                fetched = []
                while len(fetched) < 10:
                    for records in (await kafka.getmany(tp, timeout_ms=500)).values():
                        fetched.extend(records)
                stale = {tp: fetched[6:10]}
                await kafka.commit({tp: base + 3})
                await consumer.perform_seek()
                if not stale_fetches:
                    consumer._read_offset[faust_tp] = base + 9

                real_wait = consumer._wait_next_records
                fetches = 0

                async def wait_next_records(timeout):
                    nonlocal fetches
                    fetches += 1
                    if fetches <= stale_fetches:
                        return stale, {faust_tp}
                    return await real_wait(timeout)

                monkeypatch.setattr(consumer, "_wait_next_records", wait_next_records)
                handed: list[list[int]] = []
                read_offsets: list[int | None] = []
                while sum(map(len, handed)) < 7 and len(handed) < 20:
                    batch = []
                    async for _, message in consumer.getmany(timeout=0.5):
                        batch.append(message.offset - base)
                        read_offsets.append(consumer._read_offset[faust_tp])
                        consumer._read_offset[faust_tp] = message.offset  # as Faust's fetch loop does
                    handed.append(batch)
                return base, handed, read_offsets
            finally:
                for table in (consumer._committed_offset, consumer._read_offset):
                    table.pop(faust_tp, None)
                consumer._sought.clear()

    base, handed, read_offsets = asyncio.run(asyncio.wait_for(main(), 60))
    warned = [json.loads(JsonFormatter().format(r)) for r in caplog.records
              if r.getMessage() == "records fetched before a seek dropped; fetched again"]
    assert [(w["topic"], w["partition"], w["offset"]) for w in warned] == \
        [(tp.topic, tp.partition, base + 3)] * min(stale_fetches, 1)
    # The first record handed on comes with the read offset at the committed one.
    assert read_offsets[0] == base + 3
    if stale_fetches == 0:
        assert [o for batch in handed for o in batch] == list(range(3, 10))
    elif stale_fetches == 1:
        # The stale batch is dropped, the partition sought back, and every record from
        # the committed one on is handed on.
        assert handed[0] == [] and [o for batch in handed[1:] for o in batch] == list(range(3, 10))
    else:
        # Sought back once only: the same gap again is handed on, so that Faust marks
        # the gap before it as it would.
        assert handed[0] == [] and handed[1] == [6, 7, 8, 9]
