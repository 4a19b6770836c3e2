"""Random and mutated MIME must always produce a verdict, never an exception."""

from __future__ import annotations

import asyncio
import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postwarden.records import Envelope
from streams.attachment_policy import inspect
from streams.mime_parser import parse
from streams.scoring_engine import ScoringEngine
from streams.scorer import ScoreResult
from streams.virus_scanner import ClamdAddress, ClamdScanner
from tests.streams.scoring_fixtures import (
    eicar_base64_message, plain_message, with_attachment, zip_bytes,
)

ENGINE = ScoringEngine()
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEEDS = [
    plain_message(),
    eicar_base64_message(),
    with_attachment(zip_bytes({"a.txt": b"hello", "b.exe": b"MZ"}), "files.zip"),
    (b"From: a@example.org\r\nSubject: =?utf-8?b?SGk=?=\r\nContent-Type: multipart/alternative; boundary=Z\r\n\r\n"
     b"--Z\r\nContent-Type: text/plain; charset=koi8-r\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C8=C9\r\n"
     b"--Z\r\nContent-Type: text/html\r\n\r\n<a href='http://1.2.3.4/'>www.bank.com</a>\r\n--Z--\r\n"),
]


def _check(result: ScoreResult) -> None:
    assert isinstance(result, ScoreResult)
    assert 0.0 <= result.spam_score <= 100.0
    assert result.verdict in ("clean", "spam", "virus", "unparseable")


@FAST
@given(st.binary(max_size=4000))
def test_random_bytes(raw):
    _check(ENGINE.score_sync(raw))


@st.composite
def mutated(draw):
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup", "crlf"]))
        pos = draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos:pos + draw(st.integers(1, 200))]
        elif op == "insert":
            raw[pos:pos] = draw(st.sampled_from([
                b"\r\n--Z\r\n", b"\r\n--XX--\r\n", b"Content-Type: multipart/mixed; boundary=\r\n",
                b"=?bogus?Q?=FF=?=", b"\x00", b"Content-Transfer-Encoding: base64\r\n\r\n!!!",
                b"charset=\"\"\r\n", b"\n\n", b"PK\x03\x04", b"<a href=", b"\xff\xfe",
            ]))
        elif op == "dup":
            raw[pos:pos] = raw[pos:pos + draw(st.integers(1, 400))]
        else:
            raw = bytearray(bytes(raw).replace(b"\r\n", b"\n"))
    return bytes(raw)


@FAST
@given(mutated())
def test_mutated_mime(raw):
    _check(ENGINE.score_sync(raw))


CTYPES = ["text/plain", "text/html", "application/octet-stream", "application/zip", "image/png",
          "message/rfc822", "application/x-msdownload", "text/x-unknown"]
ENCODINGS = ["7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "bogus"]
CHARSETS = ["utf-8", "latin-1", "koi8-r", "shift_jis", "x-unknown", "base64", ""]


@st.composite
def mime_tree(draw, depth=0):
    if depth < 4 and draw(st.booleans()):
        boundary = f"b{depth}{draw(st.integers(0, 99))}"
        children = draw(st.lists(mime_tree(depth=depth + 1), min_size=0, max_size=3))
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "signed"]))
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + c + b"\r\n" for c in children)
        return (f"Content-Type: multipart/{subtype}; boundary=\"{boundary}\"\r\n\r\n".encode()
                + body + (b"--" + boundary.encode() + b"--\r\n" if draw(st.booleans()) else b""))
    ctype = draw(st.sampled_from(CTYPES))
    cte = draw(st.sampled_from(ENCODINGS))
    charset = draw(st.sampled_from(CHARSETS))
    name = draw(st.sampled_from(["", "a.txt", "invoice.pdf.exe", "x.zip", "=?utf-8?q?r=C3=A9sum=C3=A9?=.doc"]))
    payload = draw(st.binary(max_size=600))
    if draw(st.booleans()):
        payload = zip_bytes({"inner" + name: payload}) if name else payload
    if cte == "base64" and draw(st.booleans()):
        payload = base64.encodebytes(payload)
    header = f"Content-Type: {ctype}; charset={charset}"
    if name:
        header += f"; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\""
    return f"{header}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode() + payload


@FAST
@given(mime_tree(), st.binary(max_size=100))
def test_generated_mime_trees(tree, noise):
    raw = b"From: x@example.org\r\nSubject: fuzz\r\nMIME-Version: 1.0\r\n" + tree + noise
    _check(ENGINE.score_sync(raw))
    msg = parse(raw)
    inspect(msg)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutated())
def test_mutated_mime_through_clamd(clamd, raw):
    engine = ScoringEngine(ENGINE.model, scanner=ClamdScanner(ClamdAddress.parse(clamd.address)))
    env = Envelope("fz", "t", "a@example.org", ["b@example.net"], "192.0.2.1", "h", False, 0.0, len(raw), "n")
    result = asyncio.run(engine.score(raw, env))
    _check(result)
    assert result.virus != "SCAN-UNAVAILABLE"
