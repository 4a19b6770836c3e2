"""Raw bytes to the stdlib's compat32 ``Message``, single-part mail read without its feed parser.

The feed parser reads a message line by line through a generator, which is
most of a parse's cost on the single-part mail that makes up most of the
traffic. A message whose header block is clean (every line a named field or
a continuation of one, ended by an empty line) and whose type is neither
multipart nor message/* comes out of the feed parser as its fields and the
rest of the text, with no defects: that is read here with two patterns.
Everything else, and everything the feed parser would note a defect on, goes
to the feed parser, so the result is the same Message either way.
"""

from __future__ import annotations

import re
from email import message_from_bytes
from email.message import Message
from email.policy import compat32

# One field: a name of printable ASCII without the colon, its first line and any
# continuation lines, each ended by CRLF, CR or LF (the feed parser's line ends).
_FIELD = r"([\041-\071\073-\176]+):([^\r\n]*(?:\r\n|\r|\n)(?:[\t ][^\r\n]*(?:\r\n|\r|\n))*)"
_FIELD_RE = re.compile(_FIELD)
_HEADER_BLOCK_RE = re.compile(f"(?:{_FIELD})*")


def read_message(raw: bytes) -> Message:
    """``email.message_from_bytes(raw, policy=compat32)``, sooner for clean single-part mail."""
    return _read_single_part(raw) or message_from_bytes(raw, policy=compat32)


def _read_single_part(raw: bytes) -> Message | None:
    """The Message the feed parser would build, or None where it might build another."""
    text = raw.decode("ascii", "surrogateescape")
    end = _HEADER_BLOCK_RE.match(text).end()  # type: ignore[union-attr]
    # The block must end at an empty line: anything else is a line the feed
    # parser reads as the body's first, with a defect (or an mbox "From " line).
    if text.startswith("\r\n", end):
        body = end + 2
    elif text.startswith(("\r", "\n"), end):
        body = end + 1
    else:
        return None
    msg = Message()
    # The first line's leading blanks go, and the last line end: as compat32's header_source_parse.
    msg._headers = [(name, value.lstrip(" \t").rstrip("\r\n"))  # type: ignore[attr-defined]
                    for name, value in _FIELD_RE.findall(text, 0, end)]
    if msg.get_content_maintype() in ("multipart", "message"):
        return None
    msg.set_payload(text[body:])
    return msg
