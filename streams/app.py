"""The Faust application: one app, topics declared from postwarden.topics.

Agents live in their own modules (score_agent, policy_agent) and are imported
by ``worker_main`` so that importing the app alone has no side effects beyond
building it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import TypeVar

import faust
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import TP
from mode.services import WaitResults

from postwarden.config import load_settings
from postwarden.kafka_security import client_kwargs, faust_credentials
from postwarden.records import RecordError
from postwarden.topics import TopicSpec
from streams.changelog_offsets import confirmed_ends

log = logging.getLogger(__name__)
R = TypeVar("R")

settings = load_settings()


class _Worker(faust.Worker):
    """Faust's worker without its terminal spinner: for the spinner, a worker logging at
    WARNING or above lowered the root logger to DEBUG, so every library's debug and
    info records were built only to be dropped (~2.5% of the worker's CPU)."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)


app = faust.App(
    settings.app_id,
    broker=[f"kafka://{s}" for s in settings.bootstrap_list] or "kafka://127.0.0.1:9092",
    store="memory://",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.replication_factor,
    # Topics are created by `postwarden topics create` with their retention.
    topic_allow_declare=False,
    producer_acks=-1,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=6,
    broker_heartbeat_interval=1,
    web_enabled=settings.health_port != 0,
    web_host=settings.health_host,
    web_port=settings.health_port or 6066,
    web_in_thread=False,
    # Other workers forward Message Center requests here (streams.mailbox_api).
    canonical_url=settings.worker_canonical_url or None,
    producer_max_batch_size=settings.producer_max_batch_size,
    producer_max_request_size=settings.max_record_bytes,
    producer_linger=settings.producer_linger_ms / 1000,
    autodiscover=False,
    Worker=_Worker,
    broker_credentials=faust_credentials(settings),
    datadir=str(settings.data_dir / "faust"),
    # Faust configures logging itself; route it through the same JSON formatter.
    logging_config={
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "postwarden.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"handlers": ["stderr"], "level": settings.log_level},
        # Faust logs whole records (message content) at DEBUG: never below INFO.
        "loggers": {"aiokafka": {"level": "WARNING"}, "kafka": {"level": "WARNING"},
                    "faust": {"level": "INFO" if settings.log_level == "DEBUG" else settings.log_level}},
    },
)


class _ConsumerThread(kafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer with POSTWARDEN_CONSUMER_FETCH_WAIT_MS instead of its fixed 1500 ms."""

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_fetch_max_wait_ms"):
            raise RuntimeError("aiokafka changed: AIOKafkaConsumer._fetch_max_wait_ms is gone")
        # Read by consumer.start() when it builds the fetcher.
        consumer._fetch_max_wait_ms = settings.consumer_fetch_wait_ms
        return consumer

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed_or_start)

    async def _seek_to_committed_or_start(self) -> Mapping[TP, int]:
        # Faust drops records it fetched for a partition that is not active (yet) or
        # across a rebalance, and relies on this seek to fetch them again. aiokafka's
        # seek does nothing where the group has no commit, so on a partition nobody
        # had committed on the dropped records were skipped for good. No commit means
        # nothing there is done: such a partition starts over from its first record.
        # Offset 0 rather than seek_to_beginning, which waits for the broker inside a
        # rebalance; where retention removed it, the fetcher resets to the log's start.
        consumer = self._ensure_consumer()
        committed = await consumer.seek_to_committed()
        changelogs = self.consumer.app.tables.changelog_topics
        for tp, offset in committed.items():
            if not offset and tp.topic not in changelogs:
                consumer.seek(tp, 0)
        return committed


class _Consumer(kafka_driver.Consumer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Per partition, the offset the last seek to the committed offsets put it at,
        # until the first record from there on is handed to the agents.
        self._sought: dict[TP, int] = {}
        self._sought_again: set[TP] = set()

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        acks = self.app.topics.acks_enabled_for
        # A partition without a commit starts over at 0 (_ConsumerThread).
        self._sought = {TP(tp.topic, tp.partition): offset or 0
                        for tp, offset in committed.items() if acks(tp.topic)}
        self._sought_again = set()
        return committed

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, faust.types.Message]]:
        # Faust seeks back to the committed offsets after a rebalance, but a batch
        # fetched before that seek may still be handed on after it. Its first record
        # then lies past the committed offset, and Faust marks the records in between
        # done (a "gap") although nothing processed them, or drops them when they are
        # fetched again because its read offset has moved past them. Such a batch is
        # dropped instead, and the partition sought to the committed offset once more.
        # A partition whose committed record is gone (retention) shows the same gap
        # after that second seek, and is then handed on as Faust would.
        stale: set[TP] = set()
        async for tp, message in super().getmany(timeout):
            if self._sought:
                if tp in stale:
                    continue
                expected = self._sought.get(tp)
                if expected is not None and message.offset >= expected:
                    if message.offset > expected and tp not in self._sought_again:
                        stale.add(tp)
                        self._sought_again.add(tp)
                        log.warning("records fetched before a seek dropped; fetched again",
                                    extra={"topic": tp.topic, "partition": tp.partition, "offset": expected})
                        await self.seek(tp, expected)
                        continue
                    del self._sought[tp]
                    # A record of the stale batch being processed during the seek set
                    # the read offset past this one after the seek had set it here.
                    self._read_offset[tp] = expected
            yield tp, message

    def _new_offset(self, tp):
        # Faust commits the first run of acked offsets even when a message before it is
        # still being processed: its head-gap check is off by one and skipped until this
        # worker's first commit. With a concurrent agent (the score agent) that committed
        # past a message whose actor had not finished it; a SIGKILL then lost it.
        acked = self._acked[tp]
        if acked:
            running = [m.offset for m in list(self._unacked_messages) if m.tp == tp and not m.acked]
            if running and min(running) < min(acked):
                return None
        return super()._new_offset(tp)

    async def wait_first(self, *coros, timeout=None):
        # Faust's fetch loop hands each message to the agents through
        # wait_first(callback(message), suspend_flow.wait()): four tasks and an
        # asyncio.wait per message, finished a turn of the event loop later. With the
        # score agent's actors busy, a turn took ~2 ms, which paced the whole worker at
        # ~500 messages/s while its actors waited for input. While nothing can make the
        # callback wait (flow active, producer buffer and stream queues below their
        # limits) it runs to its end at once, so there is nothing for a rebalance's
        # suspend_flow to interrupt; otherwise Faust's way is kept.
        if (len(coros) == 2 and timeout is None and self._waits_on_suspend_flow(coros[1])
                and self._delivery_cannot_block()):
            coros[1].close()
            await coros[0]
            return WaitResults([coros[0]], [None], False)
        return await super().wait_first(*coros, timeout=timeout)

    def _waits_on_suspend_flow(self, coro) -> bool:
        frame = getattr(coro, "cr_frame", None)
        return frame is not None and frame.f_locals.get("self") is self.suspend_flow

    def _delivery_cannot_block(self) -> bool:
        app = self.app
        return (not self.suspend_flow.is_set() and not self.should_stop
                and app.flow_control.is_active()
                and app.producer.buffer.size <= app.producer.buffer.max_messages
                and not any(t.queue.full() for t in app.topics))

    async def highwaters(self, *partitions):
        # Table recovery reads changelogs up to these: see streams.changelog_offsets.
        ends = await super().highwaters(*partitions)
        return await confirmed_ends(settings.bootstrap_list, client_kwargs(settings), ends,
                                    settings.max_record_bytes)


class _Transport(kafka_driver.Transport):
    Consumer = _Consumer


app.transport = _Transport(app.conf.broker_consumer, app)


def topic(spec: TopicSpec) -> faust.TopicT:
    """Raw bytes on both sides: records encode themselves (postwarden.records)."""
    return app.topic(spec.name, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw",
                     partitions=settings.topic_partitions)


async def send(topic: faust.TopicT, key: bytes, value: bytes) -> asyncio.Future:
    """Hands one record to the worker's producer; the future resolves when the broker
    has it. Faust's commit flushes the producer first, so a record sent before its
    input's offset is committed is never lost to a crash.

    Not ``topic.send``: that passes through ``app.maybe_start_producer``, a
    stampede-guarded coroutine that yields to the event loop three times per call.
    In a busy worker each yield waits behind every ready actor, and routing a message
    spent more time there than in scoring it.
    """
    producer = app.producer
    if not producer.started:
        await app.maybe_start_producer()
    future = await producer.send(topic.get_topic_name(), key, value, partition=None,
                                 timestamp=None, headers=None)
    future.add_done_callback(_log_send_failure)
    return future


def _log_send_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("producer failed to send a record",
                  extra={"reason": repr(future.exception())[:200]})


async def decoded(stream: AsyncIterable[bytes], decode: Callable[[bytes], R],
                  what: str) -> AsyncIterator[R]:
    """The stream's values decoded; one that does not decode is logged and skipped,
    since replaying it would only fail again (its offset is committed like any other)."""
    async for value in stream:
        try:
            item = decode(value)
        except RecordError as exc:
            log.error(f"skipping undecodable {what}", extra={"reason": str(exc)})
            continue
        yield item


# Answering at all means started. Faust's web server answers before the worker has
# joined its group, so readiness also waits for the first table recovery to end:
# "ready" before that sent senders' mail into a worker that was still starting.
@app.page("/healthz")
async def healthz(web, request):
    return web.text("ok\n")


@app.page("/readyz")
async def readyz(web, request):
    if not app.tables.recovery.completed.is_set():
        return web.text("starting\n", status=503)
    if app.rebalancing:
        return web.text("rebalancing\n", status=503)
    return web.text("ready\n")


@app.page("/metrics")
async def metrics(web, request):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
