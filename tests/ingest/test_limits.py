"""Limits with the right codes: SIZE (552), recipients (452), harvest (421),
connections per IP and in total (421), message rate per IP (450)."""

import asyncio

from postwarden.records import Envelope
from tests.ingest.conftest import TENANT, tenants_yaml
from tests.ingest.smtp_client import RawSMTP
from tests.kafka_reader import read_topic

BODY = b"Subject: hi\r\n\r\nhello\r\n"


async def ehlo(port: int) -> RawSMTP:
    c = await RawSMTP.connect(port)
    assert (await c.cmd("EHLO client.test"))[0] == 250
    return c


async def test_message_near_size_limit_is_published_whole_and_over_it_gets_552(make_node, broker):
    size = 3 * 1024 * 1024
    node = await make_node(POSTWARDEN_MAX_MESSAGE_SIZE=str(size))
    line = b"y" * 998 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * ((size - 200) // len(line))
    assert size - 1200 < len(body) <= size and len(body) > 1024 * 1024  # over Kafka's 1 MB default
    c = await ehlo(node.settings.smtp_port)
    code, text = await c.transaction("a@x.example", ["b@example.com"], body)
    assert code == 250, text
    recs = await asyncio.to_thread(read_topic, broker.bootstrap, "mail.inbound", lambda r: len(r) >= 1, 20)
    assert recs[0].value.endswith(body)
    assert Envelope.from_headers(recs[0].headers).size == len(recs[0].value)

    code, text = await c.cmd(f"MAIL FROM:<a@x.example> SIZE={size + 1}")
    assert code == 552
    code, text = await c.transaction("a@x.example", ["b@example.com"], body + line * 1200)
    assert code == 552, text
    # The session survives an oversized message.
    assert (await c.cmd("NOOP"))[0] == 250


async def test_too_many_recipients_get_452(make_node):
    node = await make_node(POSTWARDEN_SMTP_MAX_RECIPIENTS="3")
    c = await ehlo(node.settings.smtp_port)
    await c.cmd("MAIL FROM:<a@x.example>")
    codes = [(await c.cmd(f"RCPT TO:<u{i}@example.com>"))[0] for i in range(5)]
    assert codes == [250, 250, 250, 452, 452]
    code, text = await c.cmd("DATA")
    assert code == 354
    c.send(BODY + b".\r\n")
    assert (await c.reply())[0] == 250


async def test_unknown_users_get_550_and_harvesting_is_cut_off(make_node, tmp_path):
    path = tenants_yaml(tmp_path, TENANT % ("acme", "acme.example", "127.0.0.0/8",
                                            ", recipients: [alice@acme.example, Bob@acme.example]"))
    node = await make_node(POSTWARDEN_TENANTS_FILE=path, POSTWARDEN_SMTP_MAX_INVALID_RECIPIENTS="2")
    c = await ehlo(node.settings.smtp_port)
    await c.cmd("MAIL FROM:<a@x.example>")
    assert (await c.cmd("RCPT TO:<bob@ACME.example>"))[0] == 250
    code, text = await c.cmd("RCPT TO:<mallory@acme.example>")
    assert code == 550 and "5.1.1" in text
    assert (await c.cmd("RCPT TO:<eve@acme.example>"))[0] == 550
    code, text = await c.cmd("RCPT TO:<trent@acme.example>")
    assert code == 421 and "unknown recipients" in text
    assert (await c.reply())[0] == 0  # closed


async def test_connections_per_ip_and_in_total_get_421(make_node):
    node = await make_node(POSTWARDEN_SMTP_MAX_CONNECTIONS_PER_IP="2", POSTWARDEN_SMTP_MAX_CONNECTIONS="3")
    port = node.settings.smtp_port
    a, b = await RawSMTP.connect(port), await RawSMTP.connect(port)
    third = await RawSMTP.connect(port, greet=False)
    code, text = await third.reply()
    assert code == 421 and "from your address" in text
    await a.close()
    for _ in range(50):
        if len(node.sessions) <= 1:
            break
        await asyncio.sleep(0.05)
    again = await RawSMTP.connect(port)  # a freed slot is reusable
    assert (await again.cmd("NOOP"))[0] == 250
    await b.close()
    await again.close()


async def test_total_connection_limit_gets_421(make_node):
    node = await make_node(POSTWARDEN_SMTP_MAX_CONNECTIONS="2")
    port = node.settings.smtp_port
    held = [await RawSMTP.connect(port) for _ in range(2)]
    extra = await RawSMTP.connect(port, greet=False)
    code, text = await extra.reply()
    assert code == 421 and "Too many connections" in text and "your address" not in text
    for c in held:
        await c.close()


async def test_message_rate_per_ip_gets_450(make_node):
    node = await make_node(POSTWARDEN_SMTP_MESSAGES_PER_IP_PER_MINUTE="2")
    c = await ehlo(node.settings.smtp_port)
    assert (await c.transaction("a@x.example", ["b@example.com"], BODY))[0] == 250
    assert (await c.transaction("a@x.example", ["b@example.com"], BODY))[0] == 250
    code, text = await c.cmd("MAIL FROM:<a@x.example>")
    assert code == 450 and "4.7.0" in text and "slow down" in text


async def test_long_line_in_data_is_refused(make_node):
    node = await make_node(POSTWARDEN_SMTP_MAX_LINE_LENGTH="1001")
    c = await ehlo(node.settings.smtp_port)
    code, text = await c.transaction("a@x.example", ["b@example.com"],
                                     b"Subject: long\r\n\r\n" + b"z" * 1200 + b"\r\n")
    assert code == 500 and "Line too long" in text
