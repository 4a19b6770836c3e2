"""ClamAV client speaking clamd's INSTREAM protocol over TCP or a unix socket.

The raw message is streamed as it arrived: clamd decodes MIME, transfer
encodings and archives itself, so one round trip covers every attachment.
Anything short of a definite answer from clamd (refused, timed out, size
limit, protocol garbage) is a scan failure, which the engine turns into a
held message: nothing passes unscanned because the daemon was down.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from urllib.parse import urlparse

CHUNK = 64 * 1024
_END = struct.pack("!I", 0)


@dataclass(frozen=True)
class ScanResult:
    status: str  # "clean", "infected" or "error"
    signature: str = ""
    error: str = ""


@dataclass(frozen=True)
class ClamdAddress:
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, spec: str) -> ClamdAddress:
        """``tcp://host:port`` or ``unix:///path/to/clamd.sock``."""
        url = urlparse(spec.strip())
        if url.scheme == "unix" and url.path:
            return cls(path=url.path)
        if url.scheme == "tcp" and url.hostname and url.port:
            return cls(host=url.hostname, port=url.port)
        raise ValueError(f"clamd address {spec!r}: expected tcp://host:port or unix:///path")

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.path else f"tcp://{self.host}:{self.port}"


class _Session:
    """One clamd connection in IDSESSION mode: many INSTREAMs, replies tagged by number."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.requests = 0

    def close(self) -> None:
        self.writer.close()


class ClamdScanner:
    """INSTREAM over a few persistent IDSESSION connections.

    A new connection per message cost the worker a connect and clamd a session
    setup each time. A pooled connection that clamd closed meanwhile (idle timeout,
    restart) fails before any reply; the scan is then retried once on a fresh
    connection, so a restarted clamd costs no held message, and a clamd that is
    down still gives a scan failure (the message is held).
    """

    def __init__(self, address: ClamdAddress, timeout: float = 30.0, connect_timeout: float = 2.0,
                 pool_size: int = 4):
        self.address = address
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        self._idle: list[_Session] = []

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.address.path:
            conn = asyncio.open_unix_connection(self.address.path)
        else:
            conn = asyncio.open_connection(self.address.host, self.address.port)
        # A scope, not wait_for: Python 3.11's wait_for drops a cancellation that arrives
        # as the connection completes, and the cancelled scan then went on.
        async with asyncio.timeout(self.connect_timeout):
            return await conn

    async def ping(self) -> bool:
        try:
            reader, writer = await self._open()
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(b"zPING\0")
            await writer.drain()
            return await asyncio.wait_for(reader.readuntil(b"\0"), self.connect_timeout) == b"PONG\0"
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return False
        finally:
            writer.close()

    async def scan(self, data: bytes) -> ScanResult:
        while self._idle:
            session = self._idle.pop()
            try:
                # A timeout scope, not wait_for: that wraps every scan in a task of its own.
                async with asyncio.timeout(self.timeout):
                    result = await self._instream(session, data)
            except (OSError, asyncio.IncompleteReadError):
                # Closed by clamd while idle: try the next connection, then a new one.
                session.close()
                continue
            except (asyncio.TimeoutError, asyncio.LimitOverrunError) as exc:
                session.close()
                return ScanResult("error", error=f"instream: {type(exc).__name__}")
            self._release(session, result)
            return result
        try:
            reader, writer = await self._open()
        except (OSError, asyncio.TimeoutError) as exc:
            return ScanResult("error", error=f"connect: {type(exc).__name__}")
        session = _Session(reader, writer)
        try:
            writer.write(b"zIDSESSION\0")
            async with asyncio.timeout(self.timeout):
                result = await self._instream(session, data)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            session.close()
            return ScanResult("error", error=f"instream: {type(exc).__name__}")
        self._release(session, result)
        return result

    def _release(self, session: _Session, result: ScanResult) -> None:
        # After an error reply clamd may end the session: start the next scan afresh.
        if result.status != "error" and len(self._idle) < self.pool_size:
            self._idle.append(session)
        else:
            session.close()

    async def _instream(self, session: _Session, data: bytes) -> ScanResult:
        writer = session.writer
        # One write per chunk, command and terminator included: each write is a send
        # that wakes clamd, and most messages fit in one chunk.
        head = b"zINSTREAM\0"
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            chunk = view[start:start + CHUNK]
            tail = _END if start + CHUNK >= len(view) else b""
            writer.write(b"".join((head, struct.pack("!I", len(chunk)), chunk, tail)))
            head = b""
            await writer.drain()
        if not view:
            writer.write(head + _END)
            await writer.drain()
        session.requests += 1
        reply = (await session.reader.readuntil(b"\0")).rstrip(b"\0").decode("utf-8", "replace")
        number, _, rest = reply.partition(": ")
        if number != str(session.requests):
            return ScanResult("error", error=f"reply out of sequence: {reply[:200]}")
        return parse_reply(rest)


def parse_reply(reply: str) -> ScanResult:
    """``stream: OK`` / ``stream: <name> FOUND`` / ``... ERROR``."""
    _, _, verdict = reply.partition(": ")
    if verdict == "OK":
        return ScanResult("clean")
    if verdict.endswith(" FOUND"):
        return ScanResult("infected", signature=verdict[: -len(" FOUND")].strip())
    return ScanResult("error", error=(verdict or reply)[:200])
