"""No accepted message is lost: a broker that hangs mid-burst gets 451s that can
be retried and every 250 is on the topic; shutdown drains transactions in progress."""

import asyncio
import os
import signal

import pytest

from postwarden.records import Envelope
from tests.ingest.smtp_client import RawSMTP
from tests.kafka_reader import read_topic

CLIENTS, PER_CLIENT = 8, 25


def body(marker: str) -> bytes:
    return f"Subject: burst\r\nX-Marker: {marker}\r\n\r\nmessage {marker}\r\n".encode()


async def client(port: int, n: int, results: dict[str, tuple[int, str]]) -> None:
    c = await RawSMTP.connect(port)
    await c.cmd("EHLO burst.test")
    for i in range(PER_CLIENT):
        marker = f"{n}-{i}"
        results[marker] = await c.transaction("a@x.example", ["b@example.com"], body(marker))
        await asyncio.sleep(0.02)
    await c.cmd("QUIT")
    await c.close()


async def test_broker_hanging_during_a_burst_loses_no_accepted_message(make_node, broker):
    node = await make_node(POSTWARDEN_PRODUCE_TIMEOUT="1")
    port = node.settings.smtp_port
    results: dict[str, tuple[int, str]] = {}
    burst = asyncio.gather(*(client(port, n, results) for n in range(CLIENTS)))
    await asyncio.sleep(0.4)
    os.kill(broker.proc.pid, signal.SIGSTOP)  # a hung broker: connections stay open, no acks
    try:
        await asyncio.sleep(2.5)
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    await burst

    codes = {code for code, _ in results.values()}
    assert codes <= {250, 451}, codes
    failed = [m for m, (code, _) in results.items() if code == 451]
    assert failed, "the hang should have produced 451s"
    assert all("4.3.0" in results[m][1] for m in failed)
    assert len(failed) < len(results)

    # Every 4xx can be retried once the broker answers again.
    c = await RawSMTP.connect(port)
    await c.cmd("EHLO retry.test")
    for marker in failed:
        for _ in range(40):
            results[marker] = await c.transaction("a@x.example", ["b@example.com"], body(marker))
            if results[marker][0] == 250:
                break
            await asyncio.sleep(0.5)
    await c.close()
    accepted = {text.rsplit(" ", 1)[1]: m for m, (code, text) in results.items() if code == 250}
    assert len(accepted) == CLIENTS * PER_CLIENT

    recs = await asyncio.to_thread(
        read_topic, broker.bootstrap, "mail.inbound",
        lambda r: {x.key.decode() for x in r} >= accepted.keys(), 30)
    on_topic = {r.key.decode(): r for r in recs}
    missing = accepted.keys() - on_topic.keys()
    assert not missing, f"{len(missing)} messages answered 250 are not on the topic"
    for message_id, marker in accepted.items():
        assert on_topic[message_id].value.endswith(body(marker))
        assert Envelope.from_headers(on_topic[message_id].headers).message_id == message_id


async def test_shutdown_drains_transactions_in_progress_and_closes_idle_sessions(make_node, broker):
    node = await make_node()
    port = node.settings.smtp_port
    busy = await RawSMTP.connect(port)
    await busy.cmd("EHLO busy.test")
    await busy.cmd("MAIL FROM:<a@x.example>")
    await busy.cmd("RCPT TO:<b@example.com>")
    assert (await busy.cmd("DATA"))[0] == 354
    busy.send(b"Subject: in flight\r\n\r\nfirst half ")
    idle = await RawSMTP.connect(port)
    await idle.cmd("EHLO idle.test")

    stopping = asyncio.create_task(node.stop(drain_seconds=10))
    code, text = await idle.reply()
    assert code == 421 and "4.3.2" in text
    with pytest.raises(OSError):
        await RawSMTP.connect(port)  # no longer accepting
    assert not stopping.done()

    busy.send(b"second half\r\n.\r\n")
    code, text = await busy.reply()
    assert code == 250, text
    assert (await busy.reply())[0] in (421, 0)  # then the session is closed
    await asyncio.wait_for(stopping, 10)
    recs = await asyncio.to_thread(read_topic, broker.bootstrap, "mail.inbound", lambda r: len(r) >= 1)
    assert recs[0].key.decode() == text.rsplit(" ", 1)[1]
    assert recs[0].value.endswith(b"first half second half\r\n")
