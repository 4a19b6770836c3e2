"""SMTP protocol behaviour over real sockets: malformed input, pipelining,
smuggling, byte-exact content, stalls and disconnects mid-DATA."""

import asyncio

from postwarden.records import Envelope
from tests.ingest.smtp_client import RawSMTP
from tests.kafka_reader import read_topic

BODY = b"From: a@x.example\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


async def records(bootstrap: str, n: int) -> list:
    return await asyncio.to_thread(read_topic, bootstrap, "mail.inbound", lambda r: len(r) >= n, 10)


async def only_record_is(bootstrap: str, reply: str):
    """After a good message answered with ``reply``, it is the only record on the topic."""
    # A short read past the first record shows nothing else was published.
    recs = await asyncio.to_thread(read_topic, bootstrap, "mail.inbound", lambda r: False, 1.5)
    assert [r.key.decode() for r in recs] == [reply.rsplit(" ", 1)[1]]
    return recs[0]


async def test_ehlo_advertises_size_pipelining_8bit_and_no_auth_without_tls(ingest_node):
    c = await RawSMTP.connect(ingest_node.settings.smtp_port)
    code, text = await c.cmd("EHLO client.test")
    assert code == 250
    assert f"SIZE {ingest_node.settings.max_message_size}" in text
    assert "PIPELINING" in text and "8BITMIME" in text and "ENHANCEDSTATUSCODES" in text
    assert "AUTH" not in text and "STARTTLS" not in text  # no certificate configured here
    await c.close()


async def test_malformed_commands_get_5xx_and_the_session_goes_on(ingest_node, broker):
    c = await RawSMTP.connect(ingest_node.settings.smtp_port)
    assert (await c.cmd("MAIL FROM:<a@x.example>"))[0] == 503  # before HELO
    assert (await c.cmd("FOO bar"))[0] == 500
    assert (await c.cmd(b"\xff\xfe\r\n"))[0] == 500
    assert (await c.cmd("EHLO"))[0] == 501
    assert (await c.cmd("EHLO client.test"))[0] == 250
    assert (await c.cmd("RCPT TO:<b@example.com>"))[0] == 503  # before MAIL
    assert (await c.cmd("MAIL FROM:<a@x.example> BODY=9BIT"))[0] == 501
    assert (await c.cmd("MAIL FROM:a@@@"))[0] in (501, 553)
    assert (await c.cmd("MAIL FROM:<a@x.example> SIZE=abc"))[0] == 501
    assert (await c.cmd("DATA"))[0] == 503  # before RCPT
    assert (await c.cmd("MAIL FROM:<a@x.example>"))[0] == 250
    assert (await c.cmd("MAIL FROM:<a@x.example>"))[0] == 503  # nested
    assert (await c.cmd("RCPT TO:<nobody>"))[0] == 501
    assert (await c.cmd("RCPT TO:<b@example.com> NOTIFY=NEVER"))[0] == 555
    assert (await c.cmd("RCPT TO:<b@example.com>"))[0] == 250
    assert (await c.cmd("DATA extra"))[0] == 501
    assert (await c.cmd("X" * 5000))[0] == 500  # over the line length
    code, text = await c.cmd("DATA")
    assert code == 354
    c.send(BODY + b".\r\n")
    code, text = await c.reply()
    assert code == 250, text
    assert (await c.cmd("QUIT"))[0] == 221
    await only_record_is(broker.bootstrap, text)


async def test_pipelined_transactions_get_replies_in_order(ingest_node, broker):
    c = await RawSMTP.connect(ingest_node.settings.smtp_port)
    assert (await c.cmd("EHLO client.test"))[0] == 250
    # RFC 2920: the whole batch in one write, the message right after DATA's 354.
    c.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<x@elsewhere.example>\r\n"
           b"RCPT TO:<c@example.net>\r\nDATA\r\n")
    codes = [(await c.reply())[0] for _ in range(5)]
    assert codes == [250, 250, 550, 250, 354]
    c.send(BODY + b".\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
           + BODY + b".\r\nQUIT\r\n")
    replies = [await c.reply() for _ in range(6)]
    assert [code for code, _ in replies] == [250, 250, 250, 354, 250, 221]
    recs = await records(broker.bootstrap, 2)
    assert {r.key.decode() for r in recs} == {replies[0][1].rsplit(" ", 1)[1], replies[4][1].rsplit(" ", 1)[1]}
    first = next(r for r in recs if r.key.decode() == replies[0][1].rsplit(" ", 1)[1])
    assert Envelope.from_headers(first.headers).rcpt_tos == ["b@example.com", "c@example.net"]


async def test_bare_lf_is_refused_and_lf_dot_lf_never_ends_data(ingest_node, broker):
    """SMTP smuggling: a second message hidden behind <LF>.<LF> must not become one."""
    c = await RawSMTP.connect(ingest_node.settings.smtp_port)
    await c.cmd("EHLO client.test")
    smuggled = (b"Subject: one\r\n\r\nfirst\n.\nMAIL FROM:<evil@x.example>\nRCPT TO:<b@example.com>\n"
                b"DATA\nSubject: smuggled\n\nsecond\r\n")
    code, text = await c.transaction("a@x.example", ["b@example.com"], smuggled)
    assert code == 554 and "bare CR or LF" in text
    bare_cr = b"Subject: two\r\n\r\nfirst\r.\rsecond\r\n"
    code, text = await c.transaction("a@x.example", ["b@example.com"], bare_cr)
    assert code == 554
    # The session stays usable and only the clean message is published.
    code, text = await c.transaction("a@x.example", ["b@example.com"], BODY)
    assert code == 250, text
    await c.close()
    await only_record_is(broker.bootstrap, text)


async def test_8bit_and_broken_mime_are_published_byte_exact(ingest_node, broker):
    body = (b"From: =?bogus?Q?x?= <a@x.example>\r\nSubject: caf\xc3\xa9 \xff\xfe latin1 \xe9\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"never-closed\"\r\n\r\n"
            b"--never-closed\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64===\r\n"
            b"\x00\x01 binary-ish \x80\x81\r\n..leading dot stays one dot\r\n")
    c = await RawSMTP.connect(ingest_node.settings.smtp_port)
    await c.cmd("EHLO client.test")
    code, text = await c.cmd("MAIL FROM:<a@x.example> BODY=8BITMIME SMTPUTF8")
    assert code == 250, text
    assert (await c.cmd("RCPT TO:<b@example.com>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    c.send(body + b".\r\n")
    code, text = await c.reply()
    assert code == 250, text
    rec = await only_record_is(broker.bootstrap, text)
    # Our Received header, then exactly what the client meant (dot-stuffing undone).
    assert rec.value.endswith(body.replace(b"\r\n..leading", b"\r\n.leading"))
    assert rec.value.startswith(b"Received: ")


async def test_client_stalling_mid_data_is_timed_out_and_nothing_is_published(make_node, broker):
    node = await make_node(POSTWARDEN_SMTP_DATA_TIMEOUT="1", POSTWARDEN_SMTP_COMMAND_TIMEOUT="5")
    c = await RawSMTP.connect(node.settings.smtp_port)
    await c.cmd("EHLO client.test")
    await c.cmd("MAIL FROM:<a@x.example>")
    await c.cmd("RCPT TO:<b@example.com>")
    assert (await c.cmd("DATA"))[0] == 354
    c.send(b"Subject: half\r\n\r\nand then nothing")
    code, text = await c.reply(timeout=5)
    assert code == 421 and "4.4.2" in text
    assert (await c.reply())[0] == 0  # closed
    ok = await RawSMTP.connect(node.settings.smtp_port)
    await ok.cmd("EHLO client.test")
    code, text = await ok.transaction("a@x.example", ["b@example.com"], BODY)
    assert code == 250
    await only_record_is(broker.bootstrap, text)


async def test_idle_client_is_timed_out_between_commands(make_node):
    node = await make_node(POSTWARDEN_SMTP_COMMAND_TIMEOUT="0.5")
    c = await RawSMTP.connect(node.settings.smtp_port)
    code, _ = await c.reply(timeout=5)
    assert code == 421
    assert not node.sessions or all(s.transport is None for s in node.sessions)


async def test_client_disconnecting_mid_data_publishes_nothing(ingest_node, broker):
    c = await RawSMTP.connect(ingest_node.settings.smtp_port)
    await c.cmd("EHLO client.test")
    await c.cmd("MAIL FROM:<a@x.example>")
    await c.cmd("RCPT TO:<b@example.com>")
    assert (await c.cmd("DATA"))[0] == 354
    c.send(BODY)  # no final dot
    await c.writer.drain()
    c.writer.transport.abort()
    for _ in range(50):
        if not ingest_node.sessions:
            break
        await asyncio.sleep(0.05)
    assert not ingest_node.sessions
    ok = await RawSMTP.connect(ingest_node.settings.smtp_port)
    await ok.cmd("EHLO client.test")
    code, text = await ok.transaction("a@x.example", ["b@example.com"], BODY)
    assert code == 250
    await only_record_is(broker.bootstrap, text)


async def test_data_end_and_dot_stuffing_at_every_position_and_split(ingest_node, broker):
    """Only CRLF.CRLF ends DATA, wherever the network splits it; stuffed dots are undone."""
    cases = [
        (b"", b""),                                              # empty message
        (b"one line\r\n", b"one line\r\n"),
        (b"ends with a dot.\r\n", b"ends with a dot.\r\n"),
        (b"..\r\n", b".\r\n"),                                   # a lone dot, stuffed
        (b"..leading\r\nmid\r\n...two\r\n", b".leading\r\nmid\r\n..two\r\n"),
        (b"a.\r\nb.\r\n\r\n..\r\nx" * 3 + b"\r\n", b"a.\r\nb.\r\n\r\n.\r\nx" * 3 + b"\r\n"),
        ((b"y" * 997 + b".\r\n") * 9, (b"y" * 997 + b".\r\n") * 9),   # straddles reader chunks
    ]
    c = await RawSMTP.connect(ingest_node.settings.smtp_port)
    await c.cmd("EHLO client.test")
    expected = {}
    for n, (wire, content) in enumerate(cases):
        for piece in (None, 1, 4093):  # whole, byte by byte, odd-sized chunks
            await c.cmd("MAIL FROM:<a@x.example>")
            await c.cmd("RCPT TO:<b@example.com>")
            assert (await c.cmd("DATA"))[0] == 354
            data = wire + b".\r\n"
            step = piece or len(data)
            for i in range(0, len(data), step):
                c.send(data[i:i + step])
                await c.writer.drain()
            code, text = await c.reply()
            assert code == 250, (n, piece, text)
            expected[text.rsplit(" ", 1)[1]] = content
    recs = await records(broker.bootstrap, len(expected))
    for rec in recs:
        received_end = rec.value.index(b"\r\n", rec.value.index(b"id ")) + 2
        date_end = rec.value.index(b"\r\n", received_end) + 2
        assert rec.value[date_end:] == expected[rec.key.decode()]
