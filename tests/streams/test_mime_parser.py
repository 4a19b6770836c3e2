from __future__ import annotations

import base64
import quopri
from email.message import Message
from email.utils import getaddresses

from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.mime_parser import (
    _SIMPLE_ADDRESS_RE, _URL_RE, MAX_DEPTH, content_charset, decode_text, find_urls, first_address,
    html_to_text, parse,
)
from tests.streams.scoring_fixtures import plain_message, with_attachment


def test_plain_message_headers_and_text():
    msg = parse(plain_message())
    assert not msg.unparseable
    assert msg.get("subject") == "Lunch"
    assert "see you at lunch" in msg.body_text
    assert msg.attachments == []


def test_mbox_from_line_is_stripped():
    raw = b"From alice@example.org Tue Sep  3 10:00:00 2024\n" + plain_message()
    msg = parse(raw)
    assert msg.get("from") == "Alice <alice@example.org>"
    assert not msg.has("from alice@example.org tue sep  3 10")


def test_bare_lf_line_endings():
    raw = b"From: a@example.org\nTo: b@example.net\nSubject: bare\n\nline one\nline two\n"
    msg = parse(raw)
    assert msg.get("subject") == "bare"
    assert "line two" in msg.text


def _multipart(parts: list[bytes], subtype: str = "mixed", boundary: str = "b1") -> bytes:
    out = [f"Content-Type: multipart/{subtype}; boundary={boundary}\r\n\r\n".encode()]
    for p in parts:
        out.append(f"--{boundary}\r\n".encode() + p + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def test_every_transfer_encoding_is_decoded():
    text = "Grüße aus Köln, naïve café"
    encoded = {
        "7bit": b"Content-Transfer-Encoding: 7bit\r\nContent-Type: text/plain\r\n\r\nseven bit words",
        "8bit": b"Content-Transfer-Encoding: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                + text.encode(),
        "binary": b"Content-Transfer-Encoding: binary\r\nContent-Type: text/plain; charset=latin-1\r\n\r\n"
                  + "binär".encode("latin-1"),
        "qp": b"Content-Transfer-Encoding: quoted-printable\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
              + quopri.encodestring("quoted printable ünïcode".encode()),
        "base64": b"Content-Transfer-Encoding: base64\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                  + base64.encodebytes("base sixty-four ßtring".encode()),
        "uuencode": b"Content-Transfer-Encoding: x-uuencode\r\nContent-Type: text/plain\r\n\r\n"
                    b"begin 644 x.txt\r\n+=75E;F-O9&5D(0``\r\n`\r\nend\r\n",
    }
    raw = b"From: a@example.org\r\nSubject: encodings\r\nMIME-Version: 1.0\r\n" + _multipart(list(encoded.values()))
    msg = parse(raw)
    for expected in ("seven bit words", text, "binär", "quoted printable ünïcode",
                     "base sixty-four ßtring", "uuencoded!"):
        assert expected in msg.text


def test_nested_multipart_and_attached_message():
    inner = b"Content-Type: message/rfc822\r\n\r\nFrom: c@example.com\r\nSubject: inner\r\n\r\ninner body text\r\n"
    alt = _multipart([b"Content-Type: text/plain\r\n\r\nplain alt",
                      b"Content-Type: text/html\r\n\r\n<p>html <b>alt</b></p>"], "alternative", "b2")
    raw = b"From: a@example.org\r\nSubject: nest\r\n" + _multipart([alt, inner], "mixed", "b1")
    msg = parse(raw)
    assert "plain alt" in msg.text and "inner body text" in msg.text
    assert "html alt" in msg.html_text
    assert msg.alternative_pairs
    assert max(p.depth for p in msg.parts) >= 2


def test_deep_nesting_is_cut_not_fatal():
    depth = MAX_DEPTH + 30
    body = b"Content-Type: text/plain\r\n\r\ndeepest"
    for i in range(depth):
        body = _multipart([body], "mixed", f"d{i}")
    msg = parse(b"From: a@example.org\r\nSubject: deep\r\n" + body)
    assert "NestingTooDeep" in msg.defects or msg.unparseable


def test_broken_base64_and_unknown_charset():
    raw = (b"From: a@example.org\r\nSubject: =?x-no-such-charset?B?SGVsbG8=?=\r\n"
           b"Content-Type: text/plain; charset=x-no-such-charset\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nSGVsbG8gd29y!!!bGQ=*&^\r\n")
    msg = parse(raw)
    assert not msg.unparseable
    assert msg.unknown_charsets == ["x-no-such-charset"]
    assert isinstance(msg.text, str)


def test_bytes_to_bytes_codec_names_are_not_text_charsets():
    text, known = decode_text(b"abc", "base64")
    assert text == "abc" and not known


def test_html_only_mail_becomes_text():
    raw = (b"From: a@example.org\r\nSubject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
           b"<html><head><style>p{color:red}</style></head><body><p>Buy&nbsp;now</p>"
           b"<script>var x=1;</script><a href=\"http://example.com/x\">click</a></body></html>")
    msg = parse(raw)
    assert "Buy\xa0now" in msg.body_text and "color" not in msg.body_text and "var x" not in msg.body_text
    assert msg.links[0].href == "http://example.com/x"
    assert "http://example.com/x" in msg.urls


def test_huge_headers_are_bounded():
    raw = b"From: a@example.org\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 200) for i in range(5000))
    msg = parse(raw + b"\r\nbody\r\n")
    assert not msg.unparseable
    assert len(msg.headers) == 1000


def test_rfc2047_subject_is_decoded():
    raw = b"From: a@example.org\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nx"
    assert parse(raw).get("subject") == "Grüße"


def test_attachment_with_misleading_name_keeps_real_content():
    msg = parse(with_attachment(b"MZ\x90\x00fake pe", "invoice.pdf", "application/pdf"))
    [att] = msg.attachments
    assert att.filename == "invoice.pdf" and att.extension == "pdf"
    assert att.payload.startswith(b"MZ")


def test_garbage_is_unparseable_not_an_exception():
    assert parse(b"\x00\xff\xfe garbage without any header").unparseable
    assert parse(b"").unparseable


def test_html_to_text_unescapes_entities():
    assert html_to_text("<b>a&amp;b</b><br>c").split() == ["a&b", "c"]


# Pieces that start, end, or almost make a URL, in both cases and around non-ASCII letters.
_URL_PIECES = ["http://", "HTTPS://", "hTtP", "www.", "WWW", "ww", "w.", "h", "x.test", "/p?q=1",
               " ", "\n", "<", ">", "\"", "(", "é", "ſ", "İ", "K", "a" * 30]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_URL_PIECES), max_size=40).map("".join) | st.text(max_size=300))
@example("http://" + "a" * 500 + "http://b.test")  # a match cut at its 500 characters, another right behind
@example("www.<www.x")
def test_find_urls_finds_what_the_case_insensitive_pattern_finds(text):
    assert find_urls(text) == _URL_RE.findall(text)


_CT_PIECES = ["text/plain", "TEXT/HTML", ";", " ", "\n\t", "charset", "Charset*", "=", " = ", '"',
              "us-ascii", "UTF-8", "iso-8859-1", "name=x", "'", "\\", "é", "windows-1252", "x+y:z"]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_CT_PIECES), max_size=12).map("".join))
@example('text/plain; charset="UTF-8"')
@example("text/plain;\n\tcharset = us-ascii")
@example('text/plain; charset="us-ascii"; format=flowed')
@example('text/plain; charset=utf-8"')
def test_content_charset_reads_what_the_stdlib_reads(header):
    part = Message()
    part["Content-Type"] = header
    assert content_charset(part, header) == (part.get_content_charset() or "")


_ADDRESS_PIECES = ["a", "Bob", "x.y", "@", "example.org", "<", ">", '"', "(", ")", " ", "\t", "\n ", ",",
                   ";", ":", ".", "..", "\\", "[", "]", "é", "\x0b", "\xa0", "+tag", "-", "_", "J.", "'"]


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_ADDRESS_PIECES), max_size=14).map("".join))
@example("Bob Smith <bob@example.org>")
@example("  J.  Q.\tPublic <j.q@mail.example.org>  ")
@example('"Smith, Bob" <bob@example.org>')
@example('"" <bob@example.org>')
@example("bob@example.org (Bob Smith)")
@example("bob@example.org ()")
@example("Ville Skyttä <ville@example.fi>")
@example("<bob@example.org>")
@example("bob..x@example.org")
@example("bob@example.org, ann@example.org")
def test_first_address_reads_what_getaddresses_reads(value):
    first_address.cache_clear()
    assert first_address(value) == (getaddresses([value]) or [("", "")])[0]


def test_the_common_address_forms_take_the_fast_path():
    for value in ("bob@example.org", "Bob Smith <bob@example.org>", '"Smith, Bob" <bob@example.org>',
                  "bob@example.org (Bob Smith)", "Ville Skyttä <ville@example.fi>"):
        assert _SIMPLE_ADDRESS_RE.fullmatch(value), value


def test_raw_utf8_in_an_attachments_fields_is_read_as_text():
    # Some clients send 8-bit filenames without RFC 2047 or 2231; compat32 hands such
    # fields out as Header objects, which once made the whole message unparseable.
    raw = ("From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=Z\r\n\r\n"
           "--Z\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
           "--Z\r\nContent-Type: application/octet-stream; name=\"résumé.exe\"\r\n"
           "Content-Disposition: attachment; filename=\"résumé.exe\"\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\nTVqQAA==\r\n--Z--\r\n").encode()
    msg = parse(raw)
    assert not msg.unparseable, msg.error
    [att] = msg.attachments
    assert (att.filename, att.disposition, att.extension) == ("résumé.exe", "attachment", "exe")
    assert att.payload.startswith(b"MZ")


_EIGHT_BIT_SEEDS = [plain_message(), with_attachment(b"MZ\x90\x00", "a.exe"),
                    with_attachment(b"%PDF-1.4", "r.pdf", "application/pdf")]


@st.composite
def eight_bit_header(draw):
    """A well-formed message with raw 8-bit bytes put into some of its header fields (any part's)."""
    raw = draw(st.sampled_from(_EIGHT_BIT_SEEDS))
    lines = raw.split(b"\n")
    fields = [i for i, line in enumerate(lines) if b":" in line[:40] and not line[:1].isspace()]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.sampled_from(fields))
        at = draw(st.integers(lines[i].index(b":") + 1, len(lines[i])))
        junk = draw(st.sampled_from(["é".encode(), "名前".encode(), b"\xff\xfe", b"\x80", "ü".encode("latin-1")]))
        lines[i] = lines[i][:at] + junk + lines[i][at:]
    return b"\n".join(lines)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(eight_bit_header())
def test_eight_bit_bytes_in_header_fields_never_make_a_message_unparseable(raw):
    msg = parse(raw)
    assert not msg.unparseable, msg.error
    assert msg.parts
