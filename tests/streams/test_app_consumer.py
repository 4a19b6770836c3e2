"""The worker's Kafka consumer waits at most POSTWARDEN_CONSUMER_FETCH_WAIT_MS per fetch.

Faust hard-codes 1500 ms; on a broker that does not answer a waiting fetch when
data arrives (Tansu) that is added to every agent hop.
"""

from __future__ import annotations

import asyncio

import pytest
from faust.types import TP, Message
from yarl import URL

from postwarden.config import ConfigError, Settings, load_settings
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
