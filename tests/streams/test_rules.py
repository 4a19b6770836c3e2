from __future__ import annotations

import ipaddress
from email.utils import mktime_tz, parsedate_tz

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.attachment_policy import inspect
from streams.mail_auth import AuthResults
from streams.mime_parser import parse
from streams.rules import RULES, RuleContext, _common_date, _is_ip, run_rules
from tests.streams.scoring_fixtures import plain_message, with_attachment, zip_bytes


def fired(raw: bytes, auth: AuthResults | None = None, received_at: float | None = None) -> set[str]:
    msg = parse(raw)
    ctx = RuleContext(msg, inspect(msg), auth or AuthResults(), received_at)
    return {r.name for r in run_rules(ctx)}


CLEAN = plain_message()


def test_registry_is_complete_and_unique():
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    for rule in RULES:
        assert rule.name.isupper() and rule.description and isinstance(rule.score, float | int)
        assert rule.category in ("spam", "phishing", "bulk", "dangerous_attachment")


def test_clean_mail_fires_nothing():
    assert fired(CLEAN) == set()


def _without(header: str) -> bytes:
    lines = [line for line in CLEAN.split(b"\n") if not line.lower().startswith(header.lower().encode() + b":")]
    return b"\n".join(lines)


@pytest.mark.parametrize("header,rule", [
    ("From", "MISSING_FROM"), ("Date", "MISSING_DATE"), ("Message-ID", "MISSING_MESSAGE_ID"),
    ("To", "MISSING_TO"),
])
def test_missing_headers(header, rule):
    assert rule in fired(_without(header))


def test_malformed_message_id():
    assert "MALFORMED_MESSAGE_ID" in fired(CLEAN.replace(b"<1234.5678@example.org>", b"no-at-sign"))


def test_from_display_name_spoof():
    spoof = plain_message(sender='"service@paypal.com" <x@evil-host.example>')
    same = plain_message(sender='"alice@example.org" <alice@mail.example.org>')
    assert "FROM_DISPLAY_NAME_SPOOF" in fired(spoof)
    assert "FROM_DISPLAY_NAME_SPOOF" not in fired(same)


def test_subject_all_caps():
    assert "SUBJECT_ALL_CAPS" in fired(plain_message(subject="MAKE MONEY FAST TODAY"))
    assert "SUBJECT_ALL_CAPS" not in fired(plain_message(subject="NASA news"))


def test_huge_headers():
    raw = b"".join(b"X-F%d: v\r\n" % i for i in range(400)) + CLEAN
    assert "HUGE_HEADERS" in fired(raw)


def test_dates():
    received = b"Received: from x by y; Tue, 03 Sep 2024 10:05:00 +0000\n"
    future = received + CLEAN.replace(b"Tue, 03 Sep 2024", b"Sat, 07 Sep 2024")
    past = received + CLEAN.replace(b"Tue, 03 Sep 2024", b"Mon, 01 Jan 2024")
    assert "DATE_IN_FUTURE" in fired(future)
    assert "DATE_IN_PAST" in fired(past)
    assert not {"DATE_IN_FUTURE", "DATE_IN_PAST"} & fired(received + CLEAN)
    assert "DATE_UNPARSEABLE" in fired(CLEAN.replace(b"Tue, 03 Sep 2024 10:00:00 +0000", b"yesterday-ish"))


# Date pieces: names, numbers at and past their ranges, zones, blanks and what follows a stamp.
_DATE_PIECES = ["Tue", "Sun", "tue", ",", " ", "  ", "\t", "\n ", "3", "03", "00", "31", "99", "Sep", "sep",
                "September", "Dec", "2024", "0024", "24", "1999", "10", ":", "00", "59", "61", "+0000", "-0000",
                "+0200", "-0530", "+0099", "+02000", "GMT", "EST", "(PDT)", "x", "\xa0", "\u0663"]


@settings(max_examples=800, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_DATE_PIECES), max_size=16).map("".join))
@example("Tue, 03 Sep 2024 10:00:00 +0000")
@example("Tue,3 Sep 2024 10:00 -0530 (IST)")
@example("3 Sep 2024 25:61:99 +0099")
@example("Tue, 03 Sep 2024 10:00:00 -0000")
@example("Tue, 03 Sep 2024 10:00:00 +0200\n")
@example("Tue, 03 Sep 2024 10:00:00 +0200x")
@example("Tue, 03 Sep 2024 10:00:00 +0200\xa0(CEST)")
@example("Tue, 03 Sep 0024 10:00:00 +0000")  # a year below 100 is moved to 1969-2068
@example("x 03 Sep 2024 10:00:00 +0000")  # no date: "x" is read as its day
def test_a_common_date_is_read_as_parsedate_tz_reads_it(value):
    common = _common_date(value)
    if common is not None:
        assert common == float(mktime_tz(parsedate_tz(value)))


def test_the_common_date_forms_take_the_fast_path():
    for value in ("Tue, 03 Sep 2024 10:00:00 +0000", "Tue, 3 Sep 2024 10:00:00 -0700 (PDT)",
                  "3 Sep 2024 10:00 +0200", "Tue,03 Sep 2024 10:00:00 +0000"):
        assert _common_date(value) == float(mktime_tz(parsedate_tz(value))), value


def test_dates_fall_back_to_the_envelope_time():
    sent = 1725357600.0  # the Date of CLEAN
    assert "DATE_IN_PAST" in fired(CLEAN, received_at=sent + 10 * 86400)
    assert "DATE_IN_PAST" not in fired(CLEAN, received_at=sent + 3600)


def _html(html: str, text: str | None = None) -> bytes:
    head = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: s\r\nDate: Tue, 03 Sep 2024 10:00:00 +0000\r\nMessage-ID: <m@example.org>\r\n"
    if text is None:
        return head + b"Content-Type: text/html\r\n\r\n" + html.encode()
    return head + (b"Content-Type: multipart/alternative; boundary=A\r\n\r\n--A\r\nContent-Type: text/plain\r\n\r\n"
                   + text.encode() + b"\r\n--A\r\nContent-Type: text/html\r\n\r\n" + html.encode() + b"\r\n--A--\r\n")


def test_html_only_and_mismatch():
    assert "HTML_ONLY" in fired(_html("<p>hello</p>"))
    words = " ".join(f"word{i}" for i in range(30))
    other = " ".join(f"other{i}" for i in range(30))
    assert "HTML_TEXT_MISMATCH" in fired(_html(f"<p>{other}</p>", words))
    assert "HTML_TEXT_MISMATCH" not in fired(_html(f"<p>{words}</p>", words))


def test_url_rules():
    assert "URL_NUMERIC_IP" in fired(_html('<a href="http://192.0.2.7/login">x</a>'))
    assert "URL_OBFUSCATED" in fired(_html('<a href="http://www.bank.example@198.51.100.2/">x</a>'))
    assert "URL_OBFUSCATED" in fired(_html('<a href="http://3221225994/">x</a>'))
    assert "URL_TEXT_MISMATCH" in fired(_html('<a href="http://evil.example/">www.mybank.com</a>'))
    assert "URL_TEXT_MISMATCH" not in fired(_html('<a href="https://login.mybank.com/a">www.mybank.com</a>'))
    assert "URL_SHORTENER" in fired(plain_message(body="go to https://bit.ly/abc now"))
    clean_link = fired(_html('<a href="https://example.com/page">read more</a>'))
    assert not {"URL_NUMERIC_IP", "URL_OBFUSCATED", "URL_TEXT_MISMATCH"} & clean_link


def test_mime_defects_and_unknown_charset():
    broken = (b"From: a@example.org\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=Q\r\n\r\n"
              b"--Q\r\nContent-Type: text/plain; charset=no-such-cs\r\n\r\nunterminated")
    hits = fired(broken)
    assert {"MIME_DEFECTS", "UNKNOWN_CHARSET"} <= hits


def test_attachment_rules():
    assert "ATTACHMENT_BLOCKED_EXTENSION" in fired(with_attachment(b"echo", "run.bat"))
    assert "ATTACHMENT_DOUBLE_EXTENSION" in fired(with_attachment(b"x", "invoice.pdf.exe"))
    hits = fired(with_attachment(b"MZ\x90\x00rest", "invoice.pdf", "application/pdf"))
    assert {"ATTACHMENT_EXECUTABLE", "ATTACHMENT_TYPE_MISMATCH"} <= hits
    assert "ATTACHMENT_BLOCKED_EXTENSION" in fired(with_attachment(zip_bytes({"setup.scr": b"x"}), "photos.zip"))
    assert not {r.name for r in RULES if r.category == "dangerous_attachment"} & fired(
        with_attachment(b"%PDF-1.4 ...", "report.pdf", "application/pdf"))


def test_bulk_rules():
    raw = plain_message(List_Unsubscribe="<mailto:leave@example.org>", Precedence="bulk")
    assert {"BULK_LIST_UNSUBSCRIBE", "BULK_PRECEDENCE"} <= fired(raw)


@pytest.mark.parametrize("auth,rule", [
    (AuthResults(spf="pass"), "SPF_PASS"), (AuthResults(spf="fail"), "SPF_FAIL"),
    (AuthResults(spf="softfail"), "SPF_SOFTFAIL"), (AuthResults(dkim="pass"), "DKIM_VALID"),
    (AuthResults(dkim="fail"), "DKIM_INVALID"), (AuthResults(dmarc="pass"), "DMARC_PASS"),
    (AuthResults(dmarc="fail"), "DMARC_FAIL"),
])
def test_auth_rules(auth, rule):
    assert rule in fired(CLEAN, auth)
    assert rule not in fired(CLEAN, AuthResults())


def test_a_raising_rule_is_contained(caplog):
    class Broken:
        name, category, score, description = "BROKEN", "spam", 1.0, "raises"

        def check(self, ctx):
            raise RuntimeError("secret subject line")

    msg = parse(CLEAN)
    assert run_rules(RuleContext(msg, inspect(msg)), [Broken()]) == []
    assert "secret subject" not in caplog.text


def _parses_as_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(["1", "255", "256", "0", ".", ":", "::", "[", "]", "a", "f", "ff",
                                 "x", "٣", "%eth0", "-"]), max_size=12).map("".join))
@example("10.0.0.1")
@example("[2001:db8::1]")
@example("١٢٧.0.0.1")
def test_is_ip_agrees_with_the_ipaddress_module(host):
    assert _is_ip(host) == _parses_as_ip(host)
