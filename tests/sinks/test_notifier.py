"""Virus alerts and digests through the real broker and delivery path, with a controlled clock."""

from __future__ import annotations

import asyncio
import email
from email import policy

import pytest

from postwarden.sealing import Sealer
from postwarden.signed_links import verify
from sinks.delivery_sink import DeliverySink
from sinks.notifier import Notifier
from tests.delivery_helpers import Running, message, produce, settings_for, wait_until
from tests.smtp_servers import start_server, tenants_yaml

pytestmark = pytest.mark.slow

DAY = 86400
T0 = 20_000 * DAY + 3600  # one hour into a digest slot


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server():
    s = start_server()
    yield s
    s.stop()


def parsed(server, rcpt: str, subject_start: str) -> list:
    out = []
    for r in server.recorder.received:
        msg = email.message_from_bytes(r.content, policy=policy.default)
        if r.rcpt_tos == [rcpt] and msg["Subject"].startswith(subject_start):
            out.append(msg)
    return out


async def test_alerts_at_once_and_digests_on_schedule_across_a_restart(broker, tmp_path, server):
    tenants = tenants_yaml(tmp_path / "tenants.yaml",
                           [{"host": "127.0.0.1", "port": server.port, "tls": "none"}],
                           digest={"every": "1d", "links": True})
    settings = settings_for(broker.bootstrap, tmp_path, tenants)
    clock = Clock(T0)
    junk = [message("ann@acme.test", subject=f"junk {i}", action="quarantine", received_at=T0,
                    score=80 + i) for i in range(2)]
    virus = message("ann@acme.test", subject="invoice", action="quarantine", virus="Eicar-Test",
                    received_at=T0)
    other = message("bo@acme.test", subject="bo junk", action="quarantine", received_at=T0)
    produce(broker.bootstrap, [*junk, virus, other], Sealer(settings.keyring()))

    async with Running(DeliverySink(settings)):
        notifier = Notifier(settings, clock=clock)
        async with Running(notifier):
            assert await wait_until(lambda: len(server.recorder.received) == 1, 30)
            alert = parsed(server, "ann@acme.test", "Virus alert")[0]
            assert "Eicar-Test" in alert.get_body(("plain",)).get_content()
            assert alert["Auto-Submitted"] == "auto-generated"
            assert "body of the message" not in alert.as_string()
            await asyncio.sleep(1)
            assert len(server.recorder.received) == 1  # digests wait for the slot boundary

            clock.now = T0 + DAY
            assert await wait_until(lambda: len(server.recorder.received) == 3, 30)
            digest = parsed(server, "ann@acme.test", "Quarantine summary")[0]
            text = digest.get_body(("plain",)).get_content()
            assert "junk 0" in text and "junk 1" in text and "invoice" not in text
            assert "body of the message" not in digest.as_string()
            released = {verify(settings.keyring(), line.rsplit("/", 1)[1], "release",
                               now=clock.now)[1]["m"]
                        for line in text.splitlines() if "/r/" in line}
            assert released == {j.message_id for j in junk}
            assert parsed(server, "bo@acme.test", "Quarantine summary")

            clock.now = T0 + 2 * DAY  # nothing new: no digest
            await asyncio.sleep(1.5)
            assert len(server.recorder.received) == 3

        later = message("ann@acme.test", subject="junk after restart", action="quarantine",
                        received_at=T0 + 2 * DAY)
        produce(broker.bootstrap, [later], Sealer(settings.keyring()))
        async with Running(Notifier(settings, clock=clock)):  # state comes back from the changelog
            await asyncio.sleep(1.5)
            assert len(server.recorder.received) == 3
            clock.now = T0 + 3 * DAY
            assert await wait_until(lambda: len(server.recorder.received) == 4, 30)
            await asyncio.sleep(1)
    digests = parsed(server, "ann@acme.test", "Quarantine summary")
    assert len(digests) == 2 and len(server.recorder.received) == 4
    text = digests[1].get_body(("plain",)).get_content()
    assert "junk after restart" in text and "junk 0" not in text
    assert len(parsed(server, "ann@acme.test", "Virus alert")) == 1  # not re-sent on restart
