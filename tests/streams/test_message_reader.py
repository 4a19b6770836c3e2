from __future__ import annotations

from email import message_from_bytes
from email.message import Message
from email.policy import compat32

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.message_reader import _read_single_part, read_message
from tests.streams.scoring_fixtures import plain_message


def _shape(msg: Message) -> tuple:
    """Everything the feed parser sets on a Message, its parts' included."""
    payload = msg._payload  # type: ignore[attr-defined]
    return (msg._headers, msg._unixfrom, msg.preamble, msg.epilogue, msg.get_default_type(),  # type: ignore[attr-defined]
            [(type(d).__name__, str(d)) for d in msg.defects],
            [_shape(p) for p in payload] if isinstance(payload, list) else payload)


def _stdlib(raw: bytes) -> Message:
    return message_from_bytes(raw, policy=compat32)


# Fields and lines around every case the feed parser treats apart: folding, lines
# that end the header block with a defect, mbox lines, types it descends into,
# 8-bit bytes, and every line end it knows (and two it does not).
_LINES = [b"Subject: hi", b"From: Bob <bob@example.org>", b"X-Empty:", b"Name:  two  spaces ", b"\tfolded",
          b" folded too", b" ", b"Content-Type: text/plain; charset=utf-8", b"Content-Type: text/html",
          b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: message/rfc822",
          b"Content-Type: message/delivery-status", b"Content-Type: bogus", b"content-type: MULTIPART/alternative",
          b"From bob@example.org Mon Jan 1 00:00:00 2024", b":nameless", b"Bad Header: x", b"X\x00Y: z",
          "Subject: café".encode(), b"Sub\xffject: x", b"", b"--b", b"--b--", b"body text", b"a: b: c", b"\x0bvertical", b"\x0c"]
_ENDS = [b"\n", b"\r\n", b"\r", b"\n\r", b"\x0b", b"\x0c", b""]


_LINE = st.tuples(st.sampled_from(_LINES), st.sampled_from(_ENDS)).map(b"".join)
_TEXT = st.lists(_LINE, max_size=16).map(b"".join)
# Mostly a header block, an empty line and a body, the shape the fast path reads.
_MESSAGE = st.tuples(st.lists(_LINE, max_size=10).map(b"".join), st.sampled_from(_ENDS), _TEXT).map(b"".join)


@settings(max_examples=800, deadline=None, derandomize=True)
@given(_MESSAGE | _TEXT | st.binary(max_size=200))
@example(b"Subject: hi\r\n\r\nbody\r\n")
@example(b"Subject:\r\n\tfolded\r\n\r\n")
@example(b"\nbody without headers")
@example(b"Subject: hi\r\r\nbody")
@example(b"Subject: hi\n\n\rbody")  # the empty line is "\n"; the body starts with "\r"
@example(b"Subject: hi\n\x0bmore\n\nbody")  # not a continuation: the body starts at it
@example(b"Subject: hi\rFrom: a@example.org\n\nbody")  # a lone CR ends a line too
@example(b"Subject: hi\r\nX: a\rY: b\r\n\r\nbody")
@example(b"Subject: hi\r\nX: a\nY: b\r\n\r\nbody")
def test_a_message_is_read_as_the_feed_parser_reads_it(raw):
    assert _shape(read_message(raw)) == _shape(_stdlib(raw))


@pytest.mark.parametrize("raw", [
    plain_message(),
    plain_message().replace(b"\n", b"\r\n"),
    plain_message(subject="a subject long enough to be folded by the generator " * 3),
    b"From: a@example.org\nSubject: =?utf-8?q?caf=C3=A9?=\nX-Raw: caf\xc3\xa9\n\n<html><b>hi</b></html>\n",
    b"Subject: no body\n\n",
])
def test_clean_single_part_mail_is_read_without_the_feed_parser(raw):
    msg = _read_single_part(raw.decode("ascii", "surrogateescape"))
    assert msg is not None
    assert _shape(msg) == _shape(_stdlib(raw))


@pytest.mark.parametrize("raw", [
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\npart\n--b--\n",
    b"Content-Type: message/rfc822\n\nSubject: inner\n\nbody\n",
    b"Subject hi\n\nbody\n",  # no colon: the body starts here, with a defect
    b" folded first\nSubject: hi\n\nbody\n",
    b"Subject: hi\nFrom bob@example.org Mon Jan 1 00:00:00 2024\n\nbody\n",
    b"Subject: hi\n:nameless\n\nbody\n",
    b"Subject: headers only, no empty line",
])
def test_mail_the_feed_parser_reads_apart_goes_to_it(raw):
    assert _read_single_part(raw.decode("ascii", "surrogateescape")) is None
    assert _shape(read_message(raw)) == _shape(_stdlib(raw))
