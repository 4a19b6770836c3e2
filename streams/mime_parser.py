"""Parse a raw message once into what every scanner needs.

The stdlib parser with policy.compat32 is used because it is lenient and five
times faster than policy.default on real mail (the latter also raises on some
malformed headers while reading them); clean single-part mail is read into
the same Message without its feed parser (message_reader.py). Everything that
can go wrong with hostile input is turned into a defect string or, as a last
resort, into ``ParsedMessage.error``: callers get an object back for any bytes.
"""

from __future__ import annotations

import codecs
import functools
import html
import re
from dataclasses import dataclass, field
from email.header import decode_header
from email.message import Message
from email.utils import getaddresses

from streams.message_reader import read_message

# Bounds that keep one hostile message from costing more than a few
# milliseconds; mail beyond them is still scored, on its first part.
MAX_DEPTH = 20
MAX_PARTS = 500
MAX_TEXT_CHARS = 200_000
MAX_HEADERS = 1_000

_HEADERS_TO_DECODE = frozenset({"subject", "from", "to", "cc", "reply-to", "sender"})


@dataclass(slots=True)
class Part:
    """One leaf of the MIME tree with its payload decoded from its transfer encoding."""

    content_type: str
    filename: str
    disposition: str
    charset: str
    transfer_encoding: str
    payload: bytes
    depth: int

    @property
    def is_attachment(self) -> bool:
        return bool(self.filename) or self.disposition == "attachment" or not (
            self.content_type.startswith(("text/", "multipart/", "message/"))
        )

    @property
    def extension(self) -> str:
        name = self.filename.lower().rstrip(". ")
        return name.rpartition(".")[2] if "." in name else ""


@dataclass(slots=True)
class Link:
    href: str
    text: str


@dataclass(slots=True)
class ParsedMessage:
    raw_size: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "text/plain"
    text: str = ""
    html: str = ""
    html_text: str = ""
    parts: list[Part] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    unknown_charsets: list[str] = field(default_factory=list)
    alternative_pairs: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""
    _index: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return self._index.get(name.lower(), [])

    def has(self, name: str) -> bool:
        return name.lower() in self._index

    @property
    def attachments(self) -> list[Part]:
        return [p for p in self.parts if p.is_attachment]

    @property
    def body_text(self) -> str:
        """Readable text of the message: plain parts, else the text of the HTML."""
        return self.text if self.text.strip() else self.html_text

    @property
    def unparseable(self) -> bool:
        return bool(self.error)


def strip_mbox_line(raw: bytes) -> bytes:
    if raw.startswith(b"From "):
        nl = raw.find(b"\n")
        return raw[nl + 1:] if nl >= 0 else b""
    return raw


def decode_text(data: bytes, charset: str) -> tuple[str, bool]:
    """Decode with the declared charset; False when it was unknown or not a text codec."""
    name = charset.strip().strip("\"'").lower() if charset else ""
    if name:
        try:
            info = codecs.lookup(name)
        except (LookupError, ValueError):
            info = None
        # Names such as "base64" or "zlib" resolve to bytes-to-bytes codecs.
        if info is not None and getattr(info, "_is_text_encoding", True):
            try:
                return data.decode(info.name, "replace"), True
            except Exception:  # a few codecs raise their own types on garbage
                pass
    try:
        return data.decode("utf-8"), not name
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace"), not name


def decode_header_value(value: str) -> str:
    """RFC 2047 words decoded; a malformed or unknown-charset word is kept as written."""
    if "=?" not in value:
        return _clean_surrogates(value)
    try:
        out = []
        for chunk, cs in decode_header(value):
            if isinstance(chunk, bytes):
                out.append(decode_text(chunk, cs or "us-ascii")[0])
            else:
                out.append(chunk)
        return _clean_surrogates("".join(out))
    except Exception:  # the stdlib raises assorted errors on broken encoded words
        return _clean_surrogates(value)


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# A display name's words may hold dots (J. Smith) and any letter; what getaddresses
# reads differently (specials, other whitespace) is left out and takes its path.
_PHRASE_ATOM = r'[^\s()<>@,:;"\[\]\\]+'
# The forms nearly every From and Reply-To takes: a bare address, with or without a
# comment naming its owner, or one in angle brackets after a plain or quoted display
# name. getaddresses reads these the same way, character by character in Python, at
# fifteen times the cost.
_SIMPLE_ADDRESS_RE = re.compile(
    rf"""[ \t]*(?:({_ADDR_SPEC})(?:[ \t]*\(([^()\\\r\n]*)\))?"""
    rf"""|((?:{_PHRASE_ATOM}(?:[ \t]+{_PHRASE_ATOM})*[ \t]*)?)<({_ADDR_SPEC})>"""
    rf"""|"([^"\\\r\n]*)"[ \t]*<({_ADDR_SPEC})>)[ \t]*""")


# The rules and the model both read From: one parse serves both.
@functools.lru_cache(maxsize=32)
def first_address(value: str) -> tuple[str, str]:
    """(display name, address) of the first address in a header value, as getaddresses reads it."""
    m = _SIMPLE_ADDRESS_RE.fullmatch(value)
    if m:
        bare, comment, display, address, quoted, quoted_address = m.groups()
        if bare:
            return comment or "", bare
        if address:
            return " ".join(display.split()), address
        return quoted, quoted_address
    pairs = getaddresses([value])
    return pairs[0] if pairs else ("", "")


def _clean_surrogates(value: str) -> str:
    # compat32 smuggles undecodable header bytes through as lone surrogates.
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_SCRIPT_STYLE_RE = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.I | re.S)
_COMMENT_RE = re.compile(r"<!--.*?-->", re.S)
_BREAK_RE = re.compile(r"<(?:br|p|div|tr|li|h[1-6])\b[^>]*>", re.I)
_TAG_RE = re.compile(r"<[^>]{0,2000}>")
_ANCHOR_RE = re.compile(r"<a\b([^>]{0,2000})>(.{0,2000}?)</a\s*>", re.I | re.S)
_HREF_RE = re.compile(r"""href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)
_SPACES_RE = re.compile(r"[ \t\r\f\v]+")
_URL_RE = re.compile(r"""(?:https?://|www\.)[^\s<>"'()\[\]{}]{1,500}""", re.I)


def find_urls(text: str) -> list[str]:
    """What ``_URL_RE.findall(text)`` returns, about three times sooner on real mail."""
    if not text.isascii():
        # Under re.I some non-ASCII letters match ASCII ones (the long s matches s).
        return _URL_RE.findall(text)
    # In ASCII text every match starts at an "http" or "www." of the lowered text:
    # str.find reaches them in C, and the pattern is only tried there.
    low = text.lower()
    out: list[str] = []
    h, w = low.find("http"), low.find("www.")
    while h >= 0 or w >= 0:
        at = w if h < 0 or 0 <= w < h else h
        m = _URL_RE.match(text, at)
        end = m.end() if m else at + 1
        if m:
            out.append(m.group())
        if 0 <= h < end:
            h = low.find("http", end)
        if 0 <= w < end:
            w = low.find("www.", end)
    return out


def html_to_text(markup: str) -> str:
    text = _SCRIPT_STYLE_RE.sub(" ", markup)
    text = _COMMENT_RE.sub(" ", text)
    text = _BREAK_RE.sub("\n", text)
    text = _TAG_RE.sub(" ", text)
    text = html.unescape(text)
    return _SPACES_RE.sub(" ", text)


def extract_links(markup: str) -> list[Link]:
    links = []
    for m in _ANCHOR_RE.finditer(markup):
        h = _HREF_RE.search(m.group(1))
        if h:
            href = html.unescape(h.group(1) or h.group(2) or h.group(3) or "").strip()
            text = html.unescape(_TAG_RE.sub(" ", m.group(2))).strip()
            links.append(Link(href, text))
    return links


# "type/subtype; charset=name", the form nearly every text part has, read without
# the stdlib's general parameter parser (which costs more than the rest of a part).
_PLAIN_CHARSET_RE = re.compile(
    r'\s*[\w.+-]+/[\w.+-]+\s*;\s*charset\s*=\s*(?:"([\w.:+-]+)"|([\w.:+-]+))\s*', re.I | re.A)


def content_charset(part: Message, content_type: str) -> str:
    """``part.get_content_charset() or ""``, sooner for the common form of its header."""
    m = _PLAIN_CHARSET_RE.fullmatch(content_type)
    if m:
        return (m.group(1) or m.group(2)).lower()
    return part.get_content_charset() or ""


def part_headers(part: Message) -> dict[str, str]:
    """The first field of each name (lower case) as text.

    compat32 hands raw 8-bit bytes in a field out as a Header object, which has
    no string methods and reads each such byte as U+FFFD: "résumé.exe" sent as
    UTF-8 would come back as "r��sum��.exe".
    """
    out: dict[str, str] = {}
    for name, value in part._headers[:MAX_HEADERS]:
        out.setdefault(name.lower(), value if value.isascii() else _clean_surrogates(value))
    return out


def _part_filename(part: Message, headers: dict[str, str]) -> str:
    disposition, ctype = headers.get("content-disposition", ""), headers.get("content-type", "")
    # Most parts name no file, and the stdlib's parameter parsing is the costly part.
    if "name" not in disposition.lower() and "name" not in ctype.lower():
        return ""
    if not (disposition.isascii() and ctype.isascii()):
        # Parameters read from the fields' text: see part_headers.
        part = Message()
        for name, value in (("Content-Disposition", disposition), ("Content-Type", ctype)):
            if value:
                part[name] = value
    try:
        name = part.get_filename() or part.get_param("name", header="content-type") or ""
    except Exception:  # malformed RFC 2231 parameters
        return ""
    if isinstance(name, tuple):  # RFC 2231 value the stdlib could not collapse
        name = name[2] or ""
    return decode_header_value(str(name)).strip()


def _walk(root: Message, out: ParsedMessage) -> list[tuple[Message, int, str]]:
    """Leaves of the tree with their depth and enclosing multipart subtype.

    Iterative so that deep nesting cannot exhaust the interpreter's stack.
    """
    leaves: list[tuple[Message, int, str]] = []
    stack: list[tuple[Message, int, str]] = [(root, 0, "")]
    seen = 0
    while stack:
        part, depth, parent = stack.pop()
        seen += 1
        if seen > MAX_PARTS:
            out.defects.append("TooManyParts")
            break
        if part.is_multipart():
            if depth >= MAX_DEPTH:
                out.defects.append("NestingTooDeep")
                continue
            payload = part.get_payload()
            subtype = part.get_content_subtype() if part.get_content_maintype() == "multipart" else parent
            if isinstance(payload, list):
                stack.extend((p, depth + 1, subtype) for p in reversed(payload) if isinstance(p, Message))
        else:
            leaves.append((part, depth, parent))
        for defect in getattr(part, "defects", ()):
            out.defects.append(type(defect).__name__)
    return leaves


def parse(raw: bytes) -> ParsedMessage:
    out = ParsedMessage(raw_size=len(raw))
    try:
        _parse_into(strip_mbox_line(raw), out)
    except Exception as exc:  # last line of defence: report, never raise
        out.error = type(exc).__name__
    if not out.error and not out.headers:
        out.error = "NoHeaders"
    return out


def _parse_into(raw: bytes, out: ParsedMessage) -> None:
    msg = read_message(raw)
    index: dict[str, list[str]] = {}
    for name, value in msg._headers[:MAX_HEADERS]:
        key = name.lower()
        if key in _HEADERS_TO_DECODE:
            value = decode_header_value(value)
        elif not value.isascii():
            value = _clean_surrogates(value)
        out.headers.append((key, value))
        index.setdefault(key, []).append(value)
    out._index = index
    out.content_type = msg.get_content_type()

    texts: list[str] = []
    htmls: list[str] = []
    text_len = 0
    alternatives: dict[int, list[str]] = {}
    for part, depth, parent in _walk(msg, out):
        ctype = part.get_content_type()
        try:
            payload = part.get_payload(decode=True) or b""
        except Exception:
            out.defects.append("UndecodablePayload")
            payload = b""
        headers = part_headers(part)
        charset = content_charset(part, headers.get("content-type", ""))
        leaf = Part(
            content_type=ctype,
            filename=_part_filename(part, headers),
            disposition=headers.get("content-disposition", "").split(";", 1)[0].strip().lower(),
            charset=charset,
            transfer_encoding=headers.get("content-transfer-encoding", "").strip().lower(),
            payload=payload,
            depth=depth,
        )
        out.parts.append(leaf)
        if leaf.is_attachment or ctype not in ("text/plain", "text/html") or text_len > MAX_TEXT_CHARS:
            continue
        body, known = decode_text(payload[: MAX_TEXT_CHARS * 4], charset)
        if not known and charset:
            out.unknown_charsets.append(charset[:64])
        body = body[:MAX_TEXT_CHARS]
        text_len += len(body)
        (htmls if ctype == "text/html" else texts).append(body)
        if parent == "alternative":
            alternatives.setdefault(depth, []).append(ctype)
    out.text = "\n".join(texts)
    out.html = "\n".join(htmls)
    if out.html:
        out.html_text = html_to_text(out.html)
        out.links = extract_links(out.html)
    if texts and htmls and any(len(v) >= 2 for v in alternatives.values()):
        out.alternative_pairs.append((out.text, out.html_text))
    seen: set[str] = set()
    for source in (out.text, out.html):
        for url in find_urls(source):
            if url not in seen:
                seen.add(url)
                out.urls.append(url)
    for link in out.links:
        if link.href not in seen and link.href.lower().startswith(("http", "www.")):
            seen.add(link.href)
            out.urls.append(link.href)
