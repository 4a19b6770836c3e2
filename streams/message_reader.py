"""Raw bytes to the stdlib's compat32 ``Message``, single-part mail read without its feed parser.

The feed parser reads a message line by line through a generator, which is
most of a parse's cost on the single-part mail that makes up most of the
traffic. A message whose header block is clean (every line a named field or
a continuation of one, ended by an empty line) and whose type is neither
multipart nor message/* comes out of the feed parser as its fields and the
rest of the text, with no defects: that is read here by finding the empty
line, splitting the block into fields and checking their names with one
pattern. Everything else, and everything the feed parser would note a defect
on, goes to the feed parser, so the result is the same Message either way.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import Parser
from email.policy import compat32

# Lines end in LF throughout or in CRLF throughout (anything else goes to the feed
# parser): a field ends at a line end that no blank or tab continues.
_FIELD_END = {"\n": re.compile(r"\n(?![\t ])"), "\r\n": re.compile(r"\r\n(?![\t ])")}
# Field names, one per line: printable ASCII but the colon, as the feed parser's headerRE.
_NAMES_RE = re.compile(r"[!-9;-~]+(?:\n[!-9;-~]+)*")


def read_message(raw: bytes) -> Message:
    """``email.message_from_bytes(raw, policy=compat32)``, sooner for clean single-part mail."""
    # Decoded once, as message_from_bytes does before handing the text to the feed parser.
    text = raw.decode("ascii", "surrogateescape")
    return _read_single_part(text) or Parser(policy=compat32).parsestr(text)


def _read_single_part(text: str) -> Message | None:
    """The Message the feed parser would build, or None where it might build another."""
    first = text.find("\n")
    if first <= 0:
        return None
    eol = "\r\n" if text[first - 1] == "\r" else "\n"
    # The header block ends at the first empty line.
    end = text.find(eol + eol)
    if end < 0:
        return None
    block = text[:end]
    if eol == "\n" and "\r" in block or eol == "\r\n" and not (
            block.count("\r") == block.count("\n") == block.count("\r\n")):
        return None
    fields = [field.partition(":") for field in _FIELD_END[eol].split(block)]
    # Every line a field or its continuation: a line without a colon or with a
    # blank in its name is where the feed parser would see the body start, with a defect.
    names = [name for name, colon, _ in fields if colon]
    if len(names) != len(fields) or not _NAMES_RE.fullmatch("\n".join(names)):
        return None
    msg = Message()
    # The first line's leading blanks go, as compat32's header_source_parse drops them.
    msg._headers = [(name, value.lstrip(" \t")) for name, _, value in fields]  # type: ignore[attr-defined]
    if msg.get_content_maintype() in ("multipart", "message"):
        return None
    msg.set_payload(text[end + 2 * len(eol):])
    return msg
