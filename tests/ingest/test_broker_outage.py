"""Invariant 1: 250 only after the broker acknowledged; 451 while it is down."""

import asyncio
import os
import signal
import time

from ingest.server import IngestNode
from postwarden.local_services import Tansu
from postwarden.records import Envelope
from postwarden.topics import create_topics
from tests.ingest.conftest import ingest_settings
from tests.ingest.smtp_client import transaction
from tests.kafka_reader import read_topic


def body(i: int) -> bytes:
    return f"From: a@x.example\r\nSubject: n{i}\r\n\r\nmessage {i}\r\n".encode()


async def send_many(port: int, start: int, n: int) -> list[tuple[int, str]]:
    return [await asyncio.to_thread(transaction, port, "a@x.example", ["b@example.com"], body(i))
            for i in range(start, start + n)]


def ids_on_topic(bootstrap: str, expected: int) -> set[str]:
    records = read_topic(bootstrap, "mail.inbound", lambda r: len(r) >= expected, timeout=20)
    return {Envelope.from_headers(r.headers).message_id for r in records}


async def test_451_while_broker_down_and_250_again_after(tmp_path):
    broker = Tansu(log_path=tmp_path / "tansu.log").start()
    create_topics([broker.bootstrap], 2)
    node = IngestNode(ingest_settings(broker.bootstrap, tmp_path))
    await node.start()
    try:
        before = await send_many(node.settings.smtp_port, 0, 5)
        assert [c for c, _ in before] == [250] * 5
        accepted = {t.rsplit(" ", 1)[1] for _, t in before}
        assert ids_on_topic(broker.bootstrap, 5) >= accepted

        broker.stop()
        started = time.monotonic()
        during = await send_many(node.settings.smtp_port, 5, 3)
        assert [c for c, _ in during] == [451] * 3, during
        assert all("4.3.0" in t and "retry" in t for _, t in during)
        # Bounded wait: each 451 comes within the produce timeout (2 s) plus slack.
        assert time.monotonic() - started < 3 * 2 + 5
        for _ in range(60):
            if not node.publisher.ready:
                break
            await asyncio.sleep(0.2)
        assert not node.publisher.ready

        # Same port again; memory storage starts empty, so the topics are created anew.
        broker.start()
        create_topics([broker.bootstrap], 2)
        after: list[tuple[int, str]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (after and after[-1][0] == 250):
            after = await send_many(node.settings.smtp_port, 8, 1)
        assert after[-1][0] == 250, after
        after += await send_many(node.settings.smtp_port, 9, 4)
        assert [c for c, _ in after[-5:]] == [250] * 5
        accepted_after = {t.rsplit(" ", 1)[1] for c, t in after if c == 250}
        assert ids_on_topic(broker.bootstrap, len(accepted_after)) >= accepted_after
    finally:
        await node.stop(drain_seconds=1)
        broker.stop()


async def test_a_retry_after_a_451_whose_record_landed_late_keeps_one_message_id(tmp_path):
    broker = Tansu(log_path=tmp_path / "tansu.log").start()
    create_topics([broker.bootstrap], 2)
    node = IngestNode(ingest_settings(broker.bootstrap, tmp_path))
    await node.start()
    port = node.settings.smtp_port
    late = b"From: a@x.example\r\nSubject: late\r\n\r\nwritten after the 451\r\n"
    try:
        assert (await send_many(port, 0, 1))[0][0] == 250  # producer connected
        # A frozen broker takes the produce request but answers after the bounded wait.
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            first = await asyncio.to_thread(transaction, port, "a@x.example", ["b@example.com"], late)
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        assert first[0] == 451, first
        retry = (0, "")
        deadline = time.monotonic() + 60
        while retry[0] != 250 and time.monotonic() < deadline:
            retry = await asyncio.to_thread(transaction, port, "a@x.example", ["b@example.com"], late)
        assert retry[0] == 250, retry
        records = read_topic(broker.bootstrap, "mail.inbound",
                             lambda r: sum(b"Subject: late" in x.value for x in r) >= 2, timeout=20)
        copies = [Envelope.from_headers(r.headers).message_id for r in records
                  if b"Subject: late" in r.value]
        # Both the late write and the retry are on the topic, as one message.
        assert len(copies) == 2 and set(copies) == {retry[1].rsplit(" ", 1)[1]}, copies
        # Other mail is not affected: a different message gets a fresh id.
        other = await send_many(port, 1, 1)
        assert other[0][0] == 250 and other[0][1].rsplit(" ", 1)[1] not in copies
    finally:
        await node.stop(drain_seconds=1)
        broker.stop()
