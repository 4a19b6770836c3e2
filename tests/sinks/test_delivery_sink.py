"""The delivery sink in-process against a real broker and real SMTP servers on loopback."""

from __future__ import annotations

import asyncio
import email
from email import policy

import pytest

from postwarden.records import RoutedMessage
from postwarden.topics import DELIVER, DELIVER_RETRY_TIERS, DELIVERED
from sinks.delivery_log import DeliveryOutcome
from sinks.delivery_sink import DeliverySink
from sinks.outbound_queue import scan_queue
from sinks.retry_schedule import DeliveryRetry
from tests.delivery_helpers import Running, message, produce, settings_for, wait_until
from tests.kafka_reader import read_topic
from tests.smtp_servers import Behaviour, start_server, tenants_yaml

pytestmark = pytest.mark.slow


@pytest.fixture
def server():
    s = start_server(Behaviour(reject_local_prefix="nouser"))
    yield s
    s.stop()


def sink_for(broker, tmp_path, server_port: int, **options) -> DeliverySink:
    tenants = tenants_yaml(tmp_path / "tenants.yaml",
                           [{"host": "127.0.0.1", "port": server_port, "tls": "none"}], **options)
    return DeliverySink(settings_for(broker.bootstrap, tmp_path, tenants))


def outcomes(bootstrap: str, n: int) -> dict[str, str]:
    records = read_topic(bootstrap, DELIVERED.name, lambda r: len(r) >= n, timeout=15)
    return {r.key.decode(): DeliveryOutcome.decode(r.value).outcome for r in records}


async def test_delivers_each_recipient_once_even_when_released_again(broker, tmp_path, server):
    first = [message(f"u{i}@acme.test") for i in range(5)]
    produce(broker.bootstrap, first)
    async with Running(sink_for(broker, tmp_path, server.port)):
        assert await wait_until(lambda: len(server.recorder.received) == 5, 30)
        produce(broker.bootstrap, first[:2])  # e.g. released twice from the Message Center
        await asyncio.sleep(2)
    assert sorted(r.rcpt_tos[0] for r in server.recorder.received) == [f"u{i}@acme.test" for i in range(5)]
    assert all(r.mail_from == "bob@x.example" for r in server.recorder.received)
    assert set(outcomes(broker.bootstrap, 5).values()) == {"delivered"}


async def test_deferred_mail_waits_in_the_retry_tiers_then_gets_through(broker, tmp_path, server):
    server.behaviour.rcpt_reply = "451 4.3.0 try later"
    msg = message("ann@acme.test")
    produce(broker.bootstrap, [msg])
    sink = sink_for(broker, tmp_path, server.port)
    async with Running(sink):
        retries = await asyncio.to_thread(
            read_topic, broker.bootstrap, DELIVER_RETRY_TIERS[1].name, lambda r: len(r) >= 1, 20)
        queue = await asyncio.to_thread(scan_queue, [broker.bootstrap], sink.group_id)
        server.behaviour.rcpt_reply = None
        assert await wait_until(lambda: len(server.recorder.received) == 1, 30)
        await asyncio.sleep(1.5)
    first = DeliveryRetry.decode(read_topic(broker.bootstrap, DELIVER_RETRY_TIERS[0].name,
                                            lambda r: len(r) >= 1, 5)[0].value)
    second = DeliveryRetry.decode(retries[0].value)
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.last_reply.startswith("451 4.3.0") and first.message() == msg
    assert second.first_attempt_at == first.first_attempt_at
    assert second.due_at - first.due_at >= 0.9  # backoff grows
    rows = queue.summary(second.due_at)
    assert [(r.tenant, r.destination, r.waiting) for r in rows] == [("acme", f"127.0.0.1:{server.port}", 1)]
    assert len(server.recorder.received) == 1


async def test_rejected_mail_bounces_to_the_sender_with_a_dsn(broker, tmp_path, server):
    rejected = message("nouser@acme.test", mail_from="bob@acme.test", subject="lost")
    from_null = message("nouser2@acme.test", mail_from="")
    produce(broker.bootstrap, [rejected, from_null])
    async with Running(sink_for(broker, tmp_path, server.port)):
        assert await wait_until(lambda: len(server.recorder.received) == 1, 30)
        await asyncio.sleep(1.5)
    assert len(server.recorder.received) == 1  # the DSN, and none for the null sender
    dsn = server.recorder.received[0]
    assert dsn.mail_from == "<>" and dsn.rcpt_tos == ["bob@acme.test"]
    report = email.message_from_bytes(dsn.content, policy=policy.default)
    assert report.get_content_type() == "multipart/report"
    per_recipient = report.get_payload()[1].get_payload()[1]
    assert per_recipient["Final-Recipient"] == "rfc822; nouser@acme.test"
    assert per_recipient["Status"] == "5.1.1"
    assert outcomes(broker.bootstrap, 3)[f"{rejected.message_id}|nouser@acme.test"] == "bounced"


async def test_retries_end_with_a_delay_dsn_after_the_tenant_maximum(broker, tmp_path):
    deferring = start_server(Behaviour(rcpt_reply="452 4.2.2 mailbox full"))
    accepting = start_server()
    try:
        tenants = tenants_yaml(tmp_path / "tenants.yaml",
                               [{"host": "127.0.0.1", "port": deferring.port, "tls": "none"}],
                               max_retry_days=3 / 86400)
        msg = message("ann@acme.test", mail_from="bob@acme.test")
        produce(broker.bootstrap, [msg])
        sink = DeliverySink(settings_for(broker.bootstrap, tmp_path, tenants))
        async with Running(sink):
            dsns = await asyncio.to_thread(
                read_topic, broker.bootstrap, DELIVER.name, lambda r: len(r) >= 2, 30)
    finally:
        deferring.stop()
        accepting.stop()
    dsn = RoutedMessage.decode(dsns[1].value)
    assert dsn.mail_from == "" and dsn.recipient == "bob@acme.test" and dsn.reason == "dsn"
    report = email.message_from_bytes(dsn.raw, policy=policy.default)
    per_recipient = report.get_payload()[1].get_payload()[1]
    assert per_recipient["Status"] == "4.4.7"
    assert "452 4.2.2 mailbox full" in per_recipient["Diagnostic-Code"]
    assert report["Auto-Submitted"] == "auto-generated"
