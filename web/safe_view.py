"""A quarantined message made safe to show: sanitized HTML, no remote content, inert attachments.

HTML goes through nh3 (an allow-list sanitizer): no scripts, styles, forms,
frames or event handlers survive, and every image source that is not inline
data is dropped, so opening a message never contacts its sender (no
tracking pixels). The page's Content-Security-Policy (img-src 'self' data:)
backs this up in the browser. Attachments are only offered as downloads.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage

import nh3

MAX_TEXT = 200_000
_TAGS = {"a", "b", "blockquote", "br", "caption", "code", "div", "em", "h1", "h2", "h3", "h4", "hr",
         "i", "img", "li", "ol", "p", "pre", "span", "strong", "sub", "sup", "table", "tbody", "td",
         "tfoot", "th", "thead", "tr", "u", "ul"}
_ATTRS = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height"}, "td": {"colspan", "rowspan"},
          "th": {"colspan", "rowspan"}}
_FILENAME_BAD = re.compile(r"[^A-Za-z0-9._ -]+")
_INERT_EXTENSIONS = {"txt", "pdf", "png", "jpg", "jpeg", "gif", "csv"}


@dataclass
class Attachment:
    index: int
    filename: str
    content_type: str
    size: int


@dataclass
class SafeMessage:
    headers: dict[str, str]
    html: str | None
    text: str | None
    attachments: list[Attachment] = field(default_factory=list)
    blocked_remote: int = 0


def _attr_filter(counter: list[int]):
    def keep(tag: str, attr: str, value: str) -> str | None:
        if tag == "img" and attr == "src" and not value.startswith("data:image/"):
            counter[0] += 1
            return None
        return value
    return keep


def sanitize_html(html: str) -> tuple[str, int]:
    """(clean HTML, number of remote resources removed)."""
    counter = [0]
    clean = nh3.clean(html[:MAX_TEXT], tags=_TAGS, attributes=_ATTRS, url_schemes={"http", "https", "mailto", "data"},
                      link_rel="noopener noreferrer nofollow", attribute_filter=_attr_filter(counter),
                      strip_comments=True)
    return clean, counter[0]


def _parts(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in msg.walk() if not p.is_multipart()]


def parse(raw: bytes) -> SafeMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    headers = {}
    for name in ("From", "To", "Date", "Subject"):
        try:
            value = msg.get(name)
            headers[name] = " ".join(str(value).split()) if value is not None else ""
        except (ValueError, IndexError, TypeError):
            headers[name] = "(unreadable)"
    html = text = None
    blocked = 0
    attachments = []
    for i, part in enumerate(_parts(msg)):
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        if disposition != "attachment" and ctype in ("text/plain", "text/html"):
            try:
                content = part.get_content()
            except (LookupError, ValueError, AssertionError):
                content = part.get_payload(decode=True).decode("utf-8", "replace")
            if ctype == "text/html" and html is None:
                html, blocked = sanitize_html(content)
            elif ctype == "text/plain" and text is None:
                text = content[:MAX_TEXT]
            continue
        payload = part.get_payload(decode=True) or b""
        attachments.append(Attachment(i, safe_filename(part.get_filename() or f"attachment-{i}"),
                                      ctype, len(payload)))
    return SafeMessage(headers, html, text, attachments, blocked)


def attachment(raw: bytes, index: int) -> tuple[str, bytes] | None:
    """(safe filename, bytes) of the part with that index, if it is an attachment."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for a in parse(raw).attachments:
        if a.index == index:
            part = _parts(msg)[index]
            return a.filename, part.get_payload(decode=True) or b""
    return None


def safe_filename(name: str) -> str:
    cleaned = (_FILENAME_BAD.sub("_", name).strip(" .") or "attachment")[:100]
    # Only inert document and image types keep their extension; anything else
    # (executables, scripts, macro documents) is saved under a name nothing runs.
    if cleaned.rpartition(".")[2].lower() in _INERT_EXTENSIONS and "." in cleaned:
        return cleaned
    return cleaned + ".download"
