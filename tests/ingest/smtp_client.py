"""Blocking SMTP client helper, run in a thread from async tests."""

from __future__ import annotations

import smtplib


def transaction(port: int, sender: str, rcpts: list[str], body: bytes) -> tuple[int, str]:
    """One transaction; returns the DATA reply, or the last refusal if nothing was accepted."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        code, msg = s.mail(sender)
        if code != 250:
            return code, msg.decode()
        accepted = 0
        last = (0, b"")
        for r in rcpts:
            last = s.rcpt(r)
            accepted += last[0] == 250
        if not accepted:
            return last[0], last[1].decode()
        code, msg = s.data(body)
        return code, msg.decode()
