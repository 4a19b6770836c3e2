"""bench/sink_smtpd.py, the benchmark's downstream server, speaks SMTP to a real client."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from postwarden.local_services import free_port, wait_for_port

SINK = Path(__file__).resolve().parents[2] / "bench" / "sink_smtpd.py"


@pytest.fixture
def sink_port():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SINK), str(port)])
    try:
        wait_for_port("127.0.0.1", port, 20, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_accepts_messages_on_one_connection(sink_port):
    with smtplib.SMTP("127.0.0.1", sink_port) as client:
        assert client.ehlo()[0] == 250 and client.has_extn("pipelining")
        for body in ["", "line\r\n..dot-stuffed\r\n.\r\n", "x" * 300_000]:
            assert client.sendmail("a@sender.test", ["b@rcpt.test", "c@rcpt.test"], body) == {}
        assert client.noop()[0] == 250


def test_a_terminator_split_across_reads_ends_the_message(sink_port):
    with socket.create_connection(("127.0.0.1", sink_port), timeout=10) as sock:
        replies = sock.makefile("rb")
        assert replies.readline().startswith(b"220")
        sock.sendall(b"HELO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        assert [replies.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
        for piece in (b"Subject: s\r\n\r\nbody\r", b"\n.", b"\r", b"\n"):
            sock.sendall(piece)
        assert replies.readline().startswith(b"250 2.0.0")
        sock.sendall(b"BOGUS\r\nQUIT\r\n")
        assert replies.readline()[:3] == b"500" and replies.readline()[:3] == b"221"

