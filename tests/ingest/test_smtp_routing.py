import asyncio
import smtplib
import urllib.request

from postwarden.records import Envelope
from tests.ingest.smtp_client import transaction
from tests.kafka_reader import read_topic

BODY = b"From: a@x.example\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


async def test_accepted_message_is_on_the_topic_with_envelope_and_received_header(ingest_node, broker):
    port = ingest_node.settings.smtp_port
    code, text = await asyncio.to_thread(
        transaction, port, "a@x.example", ["b@example.com", "c@example.net"], BODY)
    assert code == 250, text
    message_id = text.rsplit(" ", 1)[1]
    records = await asyncio.to_thread(read_topic, broker.bootstrap, "mail.inbound", lambda r: len(r) >= 1)
    assert len(records) == 1
    rec = records[0]
    assert rec.key == message_id.encode()
    env = Envelope.from_headers(rec.headers)
    assert env.message_id == message_id
    assert env.tenant == "example"
    assert env.rcpt_tos == ["b@example.com", "c@example.net"]
    assert env.client_ip == "127.0.0.1" and env.helo == "client.test" and env.tls is False
    assert env.ingest_node == "test-node" and env.size == len(rec.value)
    # Our Received header first, then the client's bytes untouched.
    assert rec.value.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    assert rec.value.endswith(BODY)


async def test_unknown_domain_is_refused_no_open_relay(ingest_node, broker):
    code, text = await asyncio.to_thread(
        transaction, ingest_node.settings.smtp_port, "a@x.example", ["victim@elsewhere.example"], BODY)
    assert code == 550 and "5.7.1" in text


async def test_recipients_of_two_tenants_are_split(broker, tmp_path):
    from ingest.server import IngestNode
    from tests.ingest.conftest import ingest_settings

    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("""
tenants:
  - {id: one, domains: [one.example], relay_networks: [127.0.0.0/8], downstream: [{host: 127.0.0.1}]}
  - {id: two, domains: [two.example], relay_networks: [127.0.0.0/8], downstream: [{host: 127.0.0.1}]}
""")
    node = IngestNode(ingest_settings(broker.bootstrap, tmp_path, POSTWARDEN_TENANTS_FILE=str(tenants)))
    await node.start()
    try:
        def session():
            with smtplib.SMTP("127.0.0.1", node.settings.smtp_port, timeout=10) as s:
                s.ehlo("client.test")
                s.mail("a@x.example")
                return s.rcpt("u@one.example"), s.rcpt("u@two.example")
        first, second = await asyncio.to_thread(session)
        assert first[0] == 250
        assert second[0] == 451 and b"4.5.3" in second[1]
    finally:
        await node.stop(drain_seconds=1)


async def test_network_outside_relay_networks_is_refused(broker, tmp_path):
    from ingest.server import IngestNode
    from tests.ingest.conftest import ingest_settings

    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("""
tenants:
  - {id: far, domains: [far.example], relay_networks: [198.51.100.0/24], downstream: [{host: 127.0.0.1}]}
""")
    node = IngestNode(ingest_settings(broker.bootstrap, tmp_path, POSTWARDEN_TENANTS_FILE=str(tenants)))
    await node.start()
    try:
        code, text = await asyncio.to_thread(
            transaction, node.settings.smtp_port, "a@x.example", ["u@far.example"], BODY)
        assert code == 550 and "network may not relay" in text
    finally:
        await node.stop(drain_seconds=1)


async def test_health_ready_and_metrics(ingest_node):
    base = f"http://127.0.0.1:{ingest_node.settings.health_port}"

    def get(path):
        with urllib.request.urlopen(base + path, timeout=5) as r:
            return r.status, r.read().decode()

    for _ in range(50):
        if ingest_node.publisher.ready:
            break
        await asyncio.sleep(0.1)
    assert (await asyncio.to_thread(get, "/healthz"))[0] == 200
    assert (await asyncio.to_thread(get, "/readyz"))[0] == 200
    await asyncio.to_thread(transaction, ingest_node.settings.smtp_port, "a@x.example",
                            ["b@example.com"], BODY)
    status, metrics = await asyncio.to_thread(get, "/metrics")
    assert "postwarden_ingest_messages_total" in metrics
    assert "postwarden_ingest_produce_seconds_bucket" in metrics
