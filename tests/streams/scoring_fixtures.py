"""Real services and sample mail for the scoring tests.

Imported by the test modules that need them (fixtures included), so the
scoring tests add nothing to a shared conftest.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A
from dnslib.server import BaseResolver, DNSServer

from postwarden.local_services import free_port
from streams.clamd_service import EICAR


class ZoneResolver(BaseResolver):
    """Answers from a dict of (name, type) -> values; names under slow. never answer in time."""

    def __init__(self, records: dict[tuple[str, str], list[str]], delay: float = 3.0):
        self.records = {(n.lower().rstrip("."), t): v for (n, t), v in records.items()}
        self.delay = delay
        self.queries: list[tuple[str, str]] = []

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        self.queries.append((name, qtype))
        if name.endswith("slow.test"):
            time.sleep(self.delay)
        values = self.records.get((name, qtype))
        if values is None:
            if not any(n == name for n, _ in self.records):
                reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for value in values:
            if qtype == "TXT":
                # Long TXT values are split into 255-byte strings, as real zones do.
                chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
                rdata = TXT(chunks)
            elif qtype == "A":
                rdata = A(value)
            elif qtype == "AAAA":
                rdata = AAAA(value)
            else:
                rdata = MX(value)
            reply.add_answer(RR(request.q.qname, getattr(QTYPE, qtype), rdata=rdata, ttl=300))
        return reply


class ZoneServer:
    def __init__(self, records: dict[tuple[str, str], list[str]]):
        self.resolver = ZoneResolver(records)
        self.port = free_port()
        self.server = DNSServer(self.resolver, address="127.0.0.1", port=self.port,
                                logger=_QuietLogger())

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ZoneServer:
        self.server.start_thread()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()
        self.server.server.server_close()


class _QuietLogger:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


SPAM_WORDS = "free offer cash prize click claim guaranteed winner credit limited viagra money".split()
HAM_WORDS = "meeting agenda patch review kernel build release notes lunch tomorrow thanks".split()


def training_corpus(tmp_path: Path) -> tuple[Path, Path]:
    """A manifest of 40 short mails (20 spam) and the corpus directory they are in."""
    rng = random.Random(7)
    data = tmp_path / "data"
    lines = ["sha256\tlabel\tgroup"]
    for i in range(40):
        spam = i % 2 == 0
        words = SPAM_WORDS if spam else HAM_WORDS
        body = " ".join(rng.choice(words) for _ in range(40))
        raw = b"From x@y Mon Jan  1 00:00:00 2002\n" + plain_message(body=body, subject=f"note {i}")
        group = "spam" if spam else "easy_ham"
        (data / group).mkdir(parents=True, exist_ok=True)
        (data / group / f"{i:05d}.txt").write_bytes(raw)
        lines.append(f"{hashlib.sha256(raw).hexdigest()}\t{'spam' if spam else 'ham'}\t{group}")
    # A corpus file outside the manifest must not be read as training input.
    (data / "spam" / "held-out.txt").write_bytes(plain_message(body="held out"))
    manifest = tmp_path / "train.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, data


def plain_message(body: str = "Hello Bob,\nsee you at lunch.\n", subject: str = "Lunch",
                  sender: str = "Alice <alice@example.org>", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "bob@example.net"
    msg["Subject"] = subject
    msg["Date"] = "Tue, 03 Sep 2024 10:00:00 +0000"
    msg["Message-ID"] = "<1234.5678@example.org>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


def with_attachment(data: bytes, filename: str, ctype: str = "application/octet-stream",
                    body: str = "Please find the file attached.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.org>"
    msg["To"] = "bob@example.net"
    msg["Subject"] = "File"
    msg["Date"] = "Tue, 03 Sep 2024 10:00:00 +0000"
    msg["Message-ID"] = "<att.1@example.org>"
    msg.set_content(body)
    maintype, _, subtype = ctype.partition("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def mark_encrypted(zip_data: bytes) -> bytes:
    """Set the 'encrypted' flag bit in every local and central header, as zip tools do."""
    out = bytearray(zip_data)
    for sig, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (pos := out.find(sig, start)) >= 0:
            out[pos + flag_offset] |= 0x01
            start = pos + 4
    return bytes(out)


def eicar_base64_message() -> bytes:
    return (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: test\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
            b"--XX\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
            b"--XX\r\nContent-Type: application/octet-stream; name=readme.txt\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(EICAR) + b"--XX--\r\n")

