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


class RawSMTP:
    """A byte-level SMTP client for what smtplib will not send: malformed
    commands, pipelined batches, PROXY headers, stalls and abrupt disconnects."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, preamble: bytes = b"", greet: bool = True) -> "RawSMTP":
        import asyncio

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if preamble:
            writer.write(preamble)
        if greet:
            code, text = await client.reply()
            assert code == 220, text
        return client

    async def reply(self, timeout: float = 10.0) -> tuple[int, str]:
        """One (possibly multi-line) reply; (0, '') when the server closed."""
        import asyncio

        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                return 0, "\n".join(lines)
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text[4:])
            if text[3:4] != "-":
                return int(text[:3]), "\n".join(lines)

    async def cmd(self, line: bytes | str) -> tuple[int, str]:
        self.send(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return await self.reply()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def starttls(self) -> None:
        import ssl

        code, text = await self.cmd("STARTTLS")
        assert code == 220, text
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await self.writer.start_tls(ctx)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass

    async def transaction(self, sender: str, rcpts: list[str], body: bytes) -> tuple[int, str]:
        code, text = await self.cmd(f"MAIL FROM:<{sender}>")
        if code != 250:
            return code, text
        accepted = 0
        for r in rcpts:
            code, text = await self.cmd(f"RCPT TO:<{r}>")
            accepted += code == 250
        if not accepted:
            await self.cmd("RSET")
            return code, text
        code, text = await self.cmd("DATA")
        if code != 354:
            return code, text
        self.send(body + b".\r\n")
        return await self.reply()
