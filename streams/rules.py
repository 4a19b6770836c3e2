"""Heuristic rules in the style of Mailman 3: one small class per rule, one registry.

A rule has a name, a description, a score and a category, and a ``check``
that looks at the already parsed message. Scores are in logit units (the
same scale as the statistical model's output, which is trained with these
scores as a fixed offset, so it learns only what the rules do not already
say); positive means "more likely" for the rule's category. Rules never do
I/O: DNS-based authentication results are computed before and handed in.
"""

from __future__ import annotations

import calendar
import functools
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from email.utils import mktime_tz, parsedate_tz
from typing import ClassVar

from streams.attachment_policy import AttachmentReport
from streams.mail_auth import AuthResults
from streams.mail_auth import organizational_domain as _org
from streams.mime_parser import ParsedMessage, first_address
from streams.spam_model import url_host

log = logging.getLogger(__name__)


@dataclass
class RuleContext:
    msg: ParsedMessage
    attachments: AttachmentReport
    auth: AuthResults = field(default_factory=AuthResults)
    # Seconds since the epoch at which the message reached us, when known.
    received_at: float | None = None


class Rule:
    name: ClassVar[str]
    description: ClassVar[str]
    score: ClassVar[float]
    category: ClassVar[str] = "spam"

    def check(self, ctx: RuleContext) -> bool:
        raise NotImplementedError


RULES: list[Rule] = []


def register(cls: type[Rule]) -> type[Rule]:
    if any(r.name == cls.name for r in RULES):
        raise ValueError(f"rule {cls.name} registered twice")
    RULES.append(cls())
    return cls


# --- headers --------------------------------------------------------------

@register
class MissingFrom(Rule):
    name = "MISSING_FROM"
    description = "No From header"
    score = 1.5

    def check(self, ctx: RuleContext) -> bool:
        return not ctx.msg.get("from").strip()


@register
class MissingDate(Rule):
    name = "MISSING_DATE"
    description = "No Date header"
    score = 1.0

    def check(self, ctx: RuleContext) -> bool:
        return not ctx.msg.has("date")


@register
class MissingMessageId(Rule):
    name = "MISSING_MESSAGE_ID"
    description = "No Message-ID header"
    score = 1.0

    def check(self, ctx: RuleContext) -> bool:
        return not ctx.msg.has("message-id")


_MSGID_RE = re.compile(r"^\s*<[^<>@\s]+@[^<>@\s]+>\s*$")


@register
class MalformedMessageId(Rule):
    name = "MALFORMED_MESSAGE_ID"
    description = "Message-ID is not of the form <left@right>"
    score = 0.5

    def check(self, ctx: RuleContext) -> bool:
        mid = ctx.msg.get("message-id")
        return bool(mid) and not _MSGID_RE.match(mid)


@register
class MissingTo(Rule):
    name = "MISSING_TO"
    description = "No To or Cc header naming a recipient"
    score = 0.2

    def check(self, ctx: RuleContext) -> bool:
        return "@" not in ctx.msg.get("to") and "@" not in ctx.msg.get("cc")


_EMBEDDED_ADDR_RE = re.compile(r"[\w.+-]+@([\w-]+(?:\.[\w-]+)+)")


@register
class FromDisplayNameSpoof(Rule):
    name = "FROM_DISPLAY_NAME_SPOOF"
    description = "From display name shows an address in another domain than the real sender"
    score = 2.0
    category = "phishing"

    def check(self, ctx: RuleContext) -> bool:
        display, address = first_address(ctx.msg.get("from"))
        shown = _EMBEDDED_ADDR_RE.search(display)
        if not shown or "@" not in address:
            return False
        return _org(shown.group(1)) != _org(address.rpartition("@")[2])


@register
class SubjectAllCaps(Rule):
    name = "SUBJECT_ALL_CAPS"
    description = "Subject written in capitals only"
    score = 0.8

    def check(self, ctx: RuleContext) -> bool:
        letters = [c for c in ctx.msg.get("subject") if c.isalpha()]
        return len(letters) >= 10 and all(c.isupper() for c in letters)


@register
class HugeHeaders(Rule):
    name = "HUGE_HEADERS"
    description = "Header section unusually large (many or very long fields)"
    score = 1.0

    def check(self, ctx: RuleContext) -> bool:
        headers = ctx.msg.headers
        return len(headers) > 300 or sum(len(v) for _, v in headers) > 64 * 1024


# --- dates ----------------------------------------------------------------

# "Tue, 3 Sep 2024 10:00:00 +0200", with or without the day name, the seconds or
# a comment after the zone: nearly every Date and Received stamp. parsedate_tz
# reads it as these fields, after a general token shuffle that costs several
# times more; any other spelling (folded, a zone name, two-digit years) is left to it.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_COMMON_DATE_RE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),[ \t]*)?([0-9]{1,2})[ \t]+(" + "|".join(_MONTHS) + r")[ \t]+"
    r"([1-9][0-9]{3})[ \t]+([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?[ \t]+([+-])([0-9]{2})([0-9]{2})(?:[ \t]|$)")


def _common_date(value: str) -> float | None:
    m = _COMMON_DATE_RE.match(value)
    if m is None:
        return None
    day, month, year, hour, minute, second, sign, zone_h, zone_m = m.groups()
    t = calendar.timegm((int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute),
                         int(second or 0), 0, 1, -1))
    offset = int(zone_h) * 3600 + int(zone_m) * 60
    return float(t + offset if sign == "-" else t - offset)


# Three date rules read the same Date and Received stamps of a message.
@functools.lru_cache(maxsize=32)
def _parse_date(value: str) -> float | None:
    common = _common_date(value)
    if common is not None:
        return common
    try:
        parsed = parsedate_tz(value)
        return float(mktime_tz(parsed)) if parsed else None
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


def reference_time(ctx: RuleContext) -> float | None:
    """When the message was received: the newest Received stamp, else the envelope.

    Received stamps are preferred so that archived mail is judged against the
    time it travelled, not against today.
    """
    for received in ctx.msg.get_all("received")[:3]:
        _, _, stamp = received.rpartition(";")
        when = _parse_date(stamp.strip())
        if when is not None:
            return when
    return ctx.received_at


@register
class DateUnparseable(Rule):
    name = "DATE_UNPARSEABLE"
    description = "Date header cannot be read as an RFC 5322 date"
    score = 1.0

    def check(self, ctx: RuleContext) -> bool:
        date = ctx.msg.get("date")
        return bool(date.strip()) and _parse_date(date) is None


@register
class DateInFuture(Rule):
    name = "DATE_IN_FUTURE"
    description = "Date header more than 12 hours after the message was received"
    score = 1.5

    def check(self, ctx: RuleContext) -> bool:
        sent, ref = _parse_date(ctx.msg.get("date")), reference_time(ctx)
        return sent is not None and ref is not None and sent - ref > 12 * 3600


@register
class DateInPast(Rule):
    name = "DATE_IN_PAST"
    description = "Date header more than 4 days before the message was received"
    score = 1.0

    def check(self, ctx: RuleContext) -> bool:
        sent, ref = _parse_date(ctx.msg.get("date")), reference_time(ctx)
        return sent is not None and ref is not None and ref - sent > 4 * 86400


# --- structure ------------------------------------------------------------

@register
class HtmlOnly(Rule):
    name = "HTML_ONLY"
    description = "HTML body without a plain-text version"
    score = 0.3

    def check(self, ctx: RuleContext) -> bool:
        return bool(ctx.msg.html) and not ctx.msg.text.strip()


_WORDS_RE = re.compile(r"\w{3,}")


@register
class HtmlTextMismatch(Rule):
    name = "HTML_TEXT_MISMATCH"
    description = "Plain-text and HTML alternatives say different things"
    score = 0.5

    def check(self, ctx: RuleContext) -> bool:
        for text, html_text in ctx.msg.alternative_pairs:
            a = set(_WORDS_RE.findall(text.lower()[:20000]))
            b = set(_WORDS_RE.findall(html_text.lower()[:20000]))
            if len(a) + len(b) >= 20 and len(a & b) / max(1, len(a | b)) < 0.2:
                return True
        return False


@register
class MimeDefects(Rule):
    name = "MIME_DEFECTS"
    description = "MIME structure is broken (missing boundaries, bad encodings)"
    score = 0.5

    def check(self, ctx: RuleContext) -> bool:
        return bool(ctx.msg.defects)


@register
class UnknownCharset(Rule):
    name = "UNKNOWN_CHARSET"
    description = "Text declared in a character set that does not exist"
    score = 0.3

    def check(self, ctx: RuleContext) -> bool:
        return bool(ctx.msg.unknown_charsets)


# --- links ----------------------------------------------------------------

_IPV4_CHARS_RE = re.compile(r"[0-9.]+")


def _is_ip(host: str) -> bool:
    host = host.strip("[]")
    if ":" not in host and not _IPV4_CHARS_RE.fullmatch(host):
        return False  # neither form: most hosts, and a raised ValueError costs microseconds
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


_NUMERIC_HOST_RE = re.compile(r"^(?:0x[0-9a-f]+|\d{8,10})$", re.I)
_AUTHORITY_RE = re.compile(r"^[a-z][a-z0-9+.-]*://([^/?#]*)", re.I)


@register
class UrlNumericIp(Rule):
    name = "URL_NUMERIC_IP"
    description = "Link to a bare IP address instead of a domain"
    score = 1.5
    category = "phishing"

    def check(self, ctx: RuleContext) -> bool:
        return any(_is_ip(url_host(u)) for u in ctx.msg.urls[:200])


@register
class UrlObfuscated(Rule):
    name = "URL_OBFUSCATED"
    description = "Link hides its real host (user@host trick, encoded or numeric host)"
    score = 2.0
    category = "phishing"

    def check(self, ctx: RuleContext) -> bool:
        for url in ctx.msg.urls[:200]:
            m = _AUTHORITY_RE.match(url)
            if not m:
                continue
            authority = m.group(1)
            if "@" in authority or "%" in authority:
                return True
            host = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
            if _NUMERIC_HOST_RE.match(host):
                return True
        return False


_SHOWN_HOST_RE = re.compile(r"^(?:https?://)?(?:www\.)?((?:[a-z0-9-]+\.)+[a-z]{2,})(?:[/:?#]|$)", re.I)


@register
class UrlTextMismatch(Rule):
    name = "URL_TEXT_MISMATCH"
    description = "Link text shows one site while the link goes to another"
    score = 1.0
    category = "phishing"

    def check(self, ctx: RuleContext) -> bool:
        for link in ctx.msg.links[:200]:
            shown = _SHOWN_HOST_RE.match(link.text.strip())
            if not shown or not link.href.lower().startswith(("http:", "https:")):
                continue
            target = url_host(link.href)
            if target and _org(shown.group(1).lower()) != _org(target):
                return True
        return False


_SHORTENERS = frozenset({"bit.ly", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "buff.ly",
                         "rebrand.ly", "cutt.ly", "shorturl.at", "tiny.cc", "rb.gy"})


@register
class UrlShortener(Rule):
    name = "URL_SHORTENER"
    description = "Link through a URL shortener that hides the destination"
    score = 0.5

    def check(self, ctx: RuleContext) -> bool:
        return any(url_host(u).removeprefix("www.") in _SHORTENERS for u in ctx.msg.urls[:200])


# --- attachments ------------------------------------------------------------

class _AttachmentRule(Rule):
    category = "dangerous_attachment"
    flag: ClassVar[str]

    def check(self, ctx: RuleContext) -> bool:
        return bool(getattr(ctx.attachments, self.flag))


@register
class AttachmentBlockedName(_AttachmentRule):
    name = "ATTACHMENT_BLOCKED_EXTENSION"
    description = "Attachment (or archive member) with an executable or script extension"
    score = 6.0
    flag = "blocked_name"


@register
class AttachmentBlockedType(_AttachmentRule):
    name = "ATTACHMENT_EXECUTABLE"
    description = "Attachment whose content is an executable program"
    score = 6.0
    flag = "blocked_type"


@register
class AttachmentDoubleExtension(_AttachmentRule):
    name = "ATTACHMENT_DOUBLE_EXTENSION"
    description = "Attachment name like invoice.pdf.exe"
    score = 6.0
    flag = "double_extension"


@register
class AttachmentTypeMismatch(_AttachmentRule):
    name = "ATTACHMENT_TYPE_MISMATCH"
    description = "Attachment content does not match its name"
    score = 6.0
    flag = "type_mismatch"


@register
class ArchiveEncrypted(_AttachmentRule):
    name = "ARCHIVE_ENCRYPTED"
    description = "Password-protected archive that no scanner can look into"
    score = 6.0
    flag = "encrypted_archive"


@register
class ArchiveTooDeep(_AttachmentRule):
    name = "ARCHIVE_TOO_DEEP"
    description = "Archives nested deeper than the policy allows"
    score = 6.0
    flag = "archive_too_deep"


@register
class ArchiveBomb(_AttachmentRule):
    name = "ARCHIVE_BOMB"
    description = "Archive that expands beyond the size or ratio limits (zip bomb)"
    score = 6.0
    flag = "archive_bomb"


# --- bulk -------------------------------------------------------------------

@register
class BulkListUnsubscribe(Rule):
    name = "BULK_LIST_UNSUBSCRIBE"
    description = "Sent to a list (List-Unsubscribe present)"
    score = 2.0
    category = "bulk"

    def check(self, ctx: RuleContext) -> bool:
        return ctx.msg.has("list-unsubscribe")


@register
class BulkPrecedence(Rule):
    name = "BULK_PRECEDENCE"
    description = "Marked as bulk or list mail (Precedence header)"
    score = 1.5
    category = "bulk"

    def check(self, ctx: RuleContext) -> bool:
        return ctx.msg.get("precedence").strip().lower() in ("bulk", "list", "junk")


# --- sender authentication (results computed by mail_auth) ------------------

class _AuthRule(Rule):
    method: ClassVar[str]
    result: ClassVar[str]

    def check(self, ctx: RuleContext) -> bool:
        return getattr(ctx.auth, self.method) == self.result


@register
class SpfPass(_AuthRule):
    name = "SPF_PASS"
    description = "Sending host is authorised by the sender domain's SPF record"
    score = -0.5
    method, result = "spf", "pass"


@register
class SpfFail(_AuthRule):
    name = "SPF_FAIL"
    description = "Sending host is forbidden by the sender domain's SPF record"
    score = 2.0
    method, result = "spf", "fail"


@register
class SpfSoftFail(_AuthRule):
    name = "SPF_SOFTFAIL"
    description = "Sending host is discouraged by the sender domain's SPF record (~all)"
    score = 1.0
    method, result = "spf", "softfail"


@register
class DkimValid(_AuthRule):
    name = "DKIM_VALID"
    description = "A DKIM signature verifies"
    score = -0.5
    method, result = "dkim", "pass"


@register
class DkimInvalid(_AuthRule):
    name = "DKIM_INVALID"
    description = "A DKIM signature is present but does not verify"
    score = 1.0
    method, result = "dkim", "fail"


@register
class DmarcPass(_AuthRule):
    name = "DMARC_PASS"
    description = "From domain authenticated by aligned SPF or DKIM (DMARC)"
    score = -1.0
    method, result = "dmarc", "pass"


@register
class DmarcFail(_AuthRule):
    name = "DMARC_FAIL"
    description = "From domain publishes DMARC and the message fails it (likely forged sender)"
    score = 3.0
    category = "phishing"
    method, result = "dmarc", "fail"


def run_rules(ctx: RuleContext, rules: list[Rule] | None = None) -> list[Rule]:
    """Every rule that fires; a rule that raises is skipped, never fatal."""
    fired = []
    for rule in RULES if rules is None else rules:
        try:
            if rule.check(ctx):
                fired.append(rule)
        except Exception as exc:  # one buggy rule must not lose the message's verdict
            # The exception text may quote the message: log its type only.
            log.error("rule %s raised %s; treated as not fired", rule.name, type(exc).__name__)
    return fired
