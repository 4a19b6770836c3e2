"""DSNs, virus alerts and digests: structure, headers, no content, and the signed links."""

from __future__ import annotations

import email
from email import policy

import pytest

from postwarden.config import TenantsFile
from postwarden.held_mail import seal_held
from postwarden.keyring import Keyring, new_master_key
from postwarden.records import RoutedMessage
from postwarden.sealing import Sealer
from postwarden.signed_links import LinkError, verify
from sinks.digest import (
    MAX_PENDING,
    DigestState,
    build_digest,
    due_entries,
    entry,
    with_pending,
)
from sinks.dsn import build_dsn
from sinks.generated_mail import HeldSummary, held_summary
from sinks.virus_alert import build_alert

NOW = 1_800_000_000.0
SECRET = "the-body-must-never-leave-quarantine"


def held(message_id: str = "m1", recipient: str = "ann@acme.test", mail_from: str = "bob@x.example",
         virus: str | None = None, subject: str = "Cheap =?utf-8?q?w=C3=A4tches?=",
         received_at: float = NOW - 3600, score: float = 87.25) -> RoutedMessage:
    raw = (f"From: Bob <{mail_from}>\r\nTo: {recipient}\r\nSubject: {subject}\r\n"
           "Date: Thu, 15 Jan 2027 08:00:00 +0000\r\nMessage-ID: <x@x.example>\r\n\r\n"
           f"{SECRET}\r\n").encode()
    return RoutedMessage(message_id, "acme", recipient, mail_from, "quarantine", "spam", score,
                         virus, ["spam"], [], received_at, raw)


SEALER = Sealer(Keyring([new_master_key("k1")], "test"))


def summary(message_id: str = "m1", **kw) -> HeldSummary:
    """A held message as the notifier sees it: sealed by the policy agent, its index opened."""
    return held_summary(SEALER, seal_held(SEALER, held(message_id, **kw)))


def tenant(links: bool = True, every: str = "1d"):
    return TenantsFile.model_validate({"tenants": [{
        "id": "acme", "domains": ["acme.test"], "relay_networks": ["127.0.0.1/32"],
        "downstream": [{"host": "127.0.0.1"}], "quarantine_retention_days": 14,
        "digest": {"every": every, "links": links}}]}).tenants[0]


@pytest.fixture
def keyring() -> Keyring:
    return Keyring([new_master_key("k1")], "test")


def parse(raw: bytes):
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@gw.test>")
    assert msg["Date"].datetime.timestamp() == NOW
    assert not msg.defects and all(not p.defects for p in msg.walk())
    return msg


def alternative_texts(part) -> tuple[str, str]:
    assert part.get_content_type() == "multipart/alternative"
    text = part.get_body(("plain",)).get_content()
    html = part.get_body(("html",)).get_content()
    return text, html


def test_dsn_is_an_rfc3464_report_with_the_headers_but_not_the_body():
    original = held(recipient="nouser@acme.test")
    msg = parse(build_dsn(original, "5.1.1", "550 5.1.1 no such user", "mx.acme.test", "gw.test", NOW))
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "bob@x.example" and "MAILER-DAEMON@gw.test" in msg["From"]
    readable, status, headers = msg.get_payload()
    text, html = alternative_texts(readable)
    assert "nouser@acme.test" in text and "550 5.1.1 no such user" in html
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; gw.test"
    assert per_recipient["Final-Recipient"] == "rfc822; nouser@acme.test"
    assert per_recipient["Action"] == "failed" and per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx.acme.test"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <x@x.example>" in headers.get_content()
    assert SECRET.encode() not in msg.as_bytes()


def test_no_dsn_for_the_null_sender():
    with pytest.raises(ValueError, match="null sender"):
        build_dsn(held(mail_from=""), "5.1.1", "550", None, "gw.test", NOW)


def test_virus_alert_names_sender_subject_virus_and_never_the_content():
    msg = parse(build_alert(summary(virus="Eicar-Test-Signature"), "postmaster@gw.test", "gw.test", NOW))
    assert msg["To"] == "ann@acme.test" and msg["From"] == "postmaster@gw.test"
    text, html = alternative_texts(msg)
    for body in (text, html):
        assert "Eicar-Test-Signature" in body and "bob@x.example" in body
        assert "Cheap wätches" in body and SECRET not in body
    with pytest.raises(ValueError, match="only for mail held for a virus"):
        build_alert(summary(), "postmaster@gw.test", "gw.test", NOW)


def test_digest_lists_held_mail_with_release_links_for_the_right_message(keyring):
    entries = [entry(summary("m1")), entry(summary("m2", subject="Second <b>offer</b>", score=55))]
    raw = build_digest(tenant(), "ann@acme.test", entries, 7, "postmaster@gw.test", "gw.test",
                       "https://mc.test", keyring, NOW)
    msg = parse(raw)
    text, html = alternative_texts(msg)
    assert "Cheap wätches" in text and "Second <b>offer</b>" in text
    assert "Second &lt;b&gt;offer&lt;/b&gt;" in html and "<b>offer" not in html
    assert "87.2" in text and SECRET not in text + html
    releases = [line.split("Release: ")[1] for line in text.splitlines() if "Release: " in line]
    assert len(releases) == 2
    claimed = set()
    for url in releases:
        assert url.startswith("https://mc.test/r/")
        tenant_id, claims = verify(keyring, url.rsplit("/", 1)[1], "release", now=NOW)
        assert tenant_id == "acme" and claims["r"] == "ann@acme.test"
        claimed.add(claims["m"])
    assert claimed == {"m1", "m2"}
    center = next(line for line in text.splitlines() if "/open/" in line).split(": ", 1)[1]
    assert verify(keyring, center.rsplit("/", 1)[1], "open", now=NOW)[1] == {"r": "ann@acme.test"}
    assert f'href="{center}"' in html

    token = releases[0].rsplit("/", 1)[1]
    body, mac = token.split(".")
    tampered = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
    with pytest.raises(LinkError):
        verify(keyring, tampered, "release", now=NOW)
    with pytest.raises(LinkError, match="another action"):
        verify(keyring, token, "open", now=NOW)
    with pytest.raises(LinkError, match="expired"):
        verify(keyring, token, "release", now=NOW + 15 * 86400)
    with pytest.raises(LinkError):
        verify(Keyring([new_master_key("k1")], "other"), token, "release", now=NOW)


def test_digest_without_links_when_the_tenant_turned_them_off(keyring):
    raw = build_digest(tenant(links=False), "ann@acme.test", [entry(summary())], 1,
                       "postmaster@gw.test", "gw.test", "https://mc.test", keyring, NOW)
    text, html = alternative_texts(parse(raw))
    assert "https://mc.test" not in text + html and "Cheap wätches" in text
    with pytest.raises(ValueError, match="no digest"):
        build_digest(tenant(), "ann@acme.test", [], 1, "p@gw.test", "gw.test", "https://mc.test",
                     keyring, NOW)


def test_digest_is_due_at_slot_boundaries_for_mail_held_before_them():
    day = 86400
    start = 20_000 * day
    state = DigestState("ann@acme.test", "acme", [entry(summary("m1", received_at=start + 100))])
    assert due_entries(state, day, start + 5000) == []  # held in the current slot: wait
    assert [e["m"] for e in due_entries(state, day, start + day + 1)] == ["m1"]
    sent = DigestState("ann@acme.test", "acme", state.pending, last_slot=start // day + 1)
    assert due_entries(sent, day, start + day + 50) == []  # one digest per slot
    assert DigestState.decode(sent.encode()) == sent


def test_digest_state_stays_bounded_and_counts_what_it_dropped(keyring):
    start = 20_000 * 86400
    state = DigestState("ann@acme.test", "acme")
    e = entry(summary("m"))
    for i in range(MAX_PENDING + 50):
        state = with_pending(state, {**e, "m": f"m{i}", "q": start + i}, offset=i)
    assert len(state.pending) == MAX_PENDING and state.unlisted == 50
    assert state.pending[0]["m"] == "m50" and state.source_offset == MAX_PENDING + 49
    raw = build_digest(tenant(), "ann@acme.test", due_entries(state, 86400, start + 86400), 1,
                       "postmaster@gw.test", "gw.test", "https://mc.test", keyring, NOW, state.unlisted)
    text, _ = alternative_texts(parse(raw))
    assert f"{MAX_PENDING + 50} messages" in text and "...and 50 more." in text
