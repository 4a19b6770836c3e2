"""Hypothesis-driven SMTP sessions against a real ingest node and broker.

Random command sequences, raw bytes, pipelined batches and abrupt closes. After
every session the node must still serve a clean transaction, and every
message it answered 250 for must be on mail.inbound (nothing accepted is lost).
"""

from __future__ import annotations

import socket
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postwarden.records import Envelope
from tests.ingest.smtp_client import transaction
from tests.kafka_reader import read_topic

COMMANDS = st.sampled_from([
    b"EHLO fuzz.test", b"HELO fuzz.test", b"MAIL FROM:<a@x.example>", b"MAIL FROM:<>",
    b"MAIL FROM:<a@x.example> SIZE=100", b"RCPT TO:<b@example.com>", b"RCPT TO:<c@example.net>",
    b"RCPT TO:<victim@elsewhere.example>", b"RCPT TO:<>", b"RCPT TO:b@example.com", b"DATA",
    b"RSET", b"NOOP", b"VRFY b@example.com", b"EXPN list", b"HELP", b"STARTTLS", b"AUTH PLAIN AAAA",
    b"BDAT 10 LAST", b"QUIT", b"MAIL FROM:<" + b"a" * 600 + b"@x.example>", b"\x00\xff\xfe",
    b"Subject: hi", b".", b"..", b"hello\r.", b"x\n.\n", b"",
])
LINE = st.one_of(COMMANDS, st.binary(max_size=200).map(lambda b: b.replace(b"\r\n", b"")))
ENDINGS = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n\r\n"])


@st.composite
def sessions(draw):
    lines = draw(st.lists(st.tuples(LINE, ENDINGS), min_size=1, max_size=25))
    pipelined = draw(st.booleans())
    abrupt = draw(st.booleans())
    return lines, pipelined, abrupt


def run_session(port: int, lines, pipelined: bool, abrupt: bool) -> list[bytes]:
    """Plays the session; returns message ids of every 250 reply to a DATA body."""
    replies = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(0.3)
        try:
            replies += s.recv(4096)
            if pipelined:
                s.sendall(b"".join(line + end for line, end in lines))
            for line, end in lines:
                if not pipelined:
                    s.sendall(line + end)
                try:
                    replies += s.recv(65536)
                except TimeoutError:
                    pass
            if not abrupt:
                s.sendall(b"\r\n.\r\nQUIT\r\n")
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    try:
                        chunk = s.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    replies += chunk
        except (ConnectionError, OSError):
            pass
        if abrupt:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return [line.split()[-1] for line in replies.split(b"\r\n") if line.startswith(b"250 2.0.0 Ok: queued as ")]


async def test_random_sessions_never_break_the_node_or_lose_an_accepted_message(ingest_node, broker):
    import asyncio

    port = ingest_node.settings.smtp_port
    accepted: list[bytes] = []

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(sessions())
    def fuzz(session):
        lines, pipelined, abrupt = session
        accepted.extend(run_session(port, lines, pipelined, abrupt))
        code, text = transaction(port, "a@x.example", ["b@example.com"], b"Subject: ok\r\n\r\nstill fine\r\n")
        assert code == 250, text
        accepted.append(text.rsplit(" ", 1)[1].encode())

    await asyncio.to_thread(fuzz)
    wanted = {a.decode() for a in accepted}
    records = await asyncio.to_thread(
        read_topic, broker.bootstrap, "mail.inbound", lambda r: len(r) >= len(wanted), 30)
    on_topic = {Envelope.from_headers(r.headers).message_id for r in records}
    assert wanted <= on_topic
    assert len(wanted) >= 60  # at least the clean transaction after each example
