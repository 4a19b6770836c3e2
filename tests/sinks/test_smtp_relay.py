"""The SMTP relay against real servers on loopback: order, failover, TLS, pooling, limits."""

from __future__ import annotations

import asyncio

import pytest

from postwarden.config import Downstream
from postwarden.local_services import free_port
from sinks.smtp_relay import SmtpRelay
from tests.smtp_servers import Behaviour, HangingServer, self_signed_context, start_server

RAW = b"From: a@x.example\r\nTo: u@acme.test\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def servers():
    started = []

    def _start(*args, **kwargs):
        s = start_server(*args, **kwargs)
        started.append(s)
        return s

    yield _start
    for s in started:
        s.stop()


def ds(port: int, priority: int = 10, tls: str = "opportunistic", **kw) -> Downstream:
    return Downstream(host="127.0.0.1", port=port, priority=priority, tls=tls, **kw)


async def test_delivers_to_the_preferred_server_and_reuses_the_connection(servers):
    backup, primary = servers(), servers()
    relay = SmtpRelay("gw.test", timeout=5)
    try:
        for _ in range(3):
            out = await relay.deliver([ds(backup.port, 20), ds(primary.port, 10)],
                                      "a@x.example", "u@acme.test", RAW)
            assert out.kind == "delivered" and out.destination == f"127.0.0.1:{primary.port}"
    finally:
        await relay.close()
    assert len(primary.recorder.received) == 3 and not backup.recorder.received
    assert primary.recorder.received[0].rcpt_tos == ["u@acme.test"]
    assert b"hello" in primary.recorder.received[0].content
    assert primary.recorder.sessions == 1  # pooled: one connection for three messages


@pytest.mark.parametrize("failure", ["refused", "deferring", "hanging"])
async def test_fails_over_to_the_next_server(servers, failure):
    backup = servers()
    hang = None
    if failure == "refused":
        first = free_port()
    elif failure == "deferring":
        first = servers(Behaviour(rcpt_reply="451 4.3.0 try later")).port
    else:
        hang = HangingServer()
        first = hang.port
    relay = SmtpRelay("gw.test", timeout=1)
    try:
        out = await relay.deliver([ds(first, 10), ds(backup.port, 20)], "a@x.example",
                                  "u@acme.test", RAW)
    finally:
        await relay.close()
        if hang:
            hang.stop()
    assert out.kind == "delivered" and out.destination == f"127.0.0.1:{backup.port}"
    assert len(backup.recorder.received) == 1


async def test_all_failing_is_temporary_with_the_last_reply(servers):
    deferring = servers(Behaviour(rcpt_reply="452 4.2.2 mailbox full"))
    hang = HangingServer()
    relay = SmtpRelay("gw.test", timeout=1)
    try:
        out = await relay.deliver([ds(hang.port, 10), ds(deferring.port, 20)], "a@x.example",
                                  "u@acme.test", RAW)
        timed_out = await relay.deliver([ds(hang.port)], "a@x.example", "u@acme.test", RAW)
    finally:
        await relay.close()
        hang.stop()
    assert out.kind == "temporary" and out.reply.startswith("452 4.2.2")
    assert out.status == "4.2.2"
    assert timed_out.kind == "temporary" and "timed out" in timed_out.reply


async def test_a_5xx_is_final_and_not_tried_elsewhere(servers):
    rejecting, backup = servers(Behaviour(reject_local_prefix="nouser")), servers()
    relay = SmtpRelay("gw.test", timeout=5)
    try:
        out = await relay.deliver([ds(rejecting.port, 10), ds(backup.port, 20)], "a@x.example",
                                  "nouser@acme.test", RAW)
        ok = await relay.deliver([ds(rejecting.port, 10)], "a@x.example", "u@acme.test", RAW)
    finally:
        await relay.close()
    assert out.kind == "permanent" and out.status == "5.1.1" and out.reply.startswith("550")
    assert not backup.recorder.received
    assert ok.kind == "delivered"  # the same pooled connection still works after the refusal


async def test_starttls_required_and_opportunistic(servers, tmp_path):
    tls_server = servers(tls_context=self_signed_context(tmp_path))
    plain = servers()
    relay = SmtpRelay("gw.test", timeout=5)
    try:
        required = await relay.deliver([ds(tls_server.port, tls="required")], "a@x.example",
                                       "u@acme.test", RAW)
        opportunistic = await relay.deliver([ds(tls_server.port, tls="opportunistic")],
                                            "a@x.example", "v@acme.test", RAW)
        refused_clear = await relay.deliver([ds(plain.port, tls="required")], "a@x.example",
                                            "u@acme.test", RAW)
        clear_ok = await relay.deliver([ds(plain.port, tls="opportunistic")], "a@x.example",
                                       "u@acme.test", RAW)
    finally:
        await relay.close()
    assert required.kind == "delivered" and opportunistic.kind == "delivered"
    assert [r.tls for r in tls_server.recorder.received] == [True, True]
    assert refused_clear.kind == "temporary" and refused_clear.status == "4.7.10"
    assert clear_ok.kind == "delivered" and len(plain.recorder.received) == 1


async def test_connections_per_destination_are_limited(servers):
    slow = servers(Behaviour(data_delay=0.3))
    relay = SmtpRelay("gw.test", timeout=5)
    try:
        outs = await asyncio.gather(*(
            relay.deliver([ds(slow.port, max_connections=2)], "a@x.example", f"u{i}@acme.test", RAW)
            for i in range(6)))
    finally:
        await relay.close()
    assert all(o.kind == "delivered" for o in outs)
    assert slow.recorder.max_active == 2
    assert slow.recorder.sessions == 2
