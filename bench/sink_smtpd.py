"""The benchmark's stand-in for a provider's mailbox server: accepts every message and
discards it.

    python bench/sink_smtpd.py PORT

It shares the benchmark machine's two cores with the pipeline, so it is as lean as
an SMTP server can be in Python: one protocol object per connection, replies written
straight from data_received, no parsing of what it accepts. aiosmtpd's Sink handler,
used before, spent 0.35 ms of CPU per message, a tenth of the pipeline's own, that a
provider's MTA on its own machine never takes from Postwarden.
"""

from __future__ import annotations

import asyncio
import sys

EHLO = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n"
REPLIES = {b"HELO": b"250 sink\r\n", b"MAIL": b"250 2.1.0 OK\r\n", b"RCPT": b"250 2.1.5 OK\r\n",
           b"RSET": b"250 2.0.0 OK\r\n", b"NOOP": b"250 2.0.0 OK\r\n",
           b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n", b"EHLO": EHLO}
END = b"\r\n.\r\n"


class SinkSession(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.in_data = False
        self.transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out = []
        while buf:
            if self.in_data:
                at = buf.find(END)
                if at < 0:
                    # Keep what could be the start of a terminator split across reads.
                    buf = buf[-4:]
                    break
                buf = buf[at + len(END):]
                self.in_data = False
                out.append(b"250 2.0.0 OK: discarded\r\n")
                continue
            at = buf.find(b"\r\n")
            if at < 0:
                break
            verb = buf[:4].upper()
            buf = buf[at + 2:]
            if verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            out.append(REPLIES.get(verb, b"500 5.5.2 Command not recognized\r\n"))
            if verb == b"DATA":
                # The CRLF that ended the DATA line also starts the terminator of an empty body.
                self.in_data = True
                buf = b"\r\n" + buf
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(SinkSession, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        pass
    else:
        uvloop.install()
    asyncio.run(serve(int(sys.argv[1])))
