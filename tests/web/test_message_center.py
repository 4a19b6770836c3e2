"""The Message Center over HTTP against a real broker and worker: list, view, release, delete, settings."""

from __future__ import annotations

import time

import pytest

from postwarden import signed_links
from postwarden.keyring import Keyring
from postwarden.records import StatsEvent
from tests.kafka_reader import read_topic
from tests.web.stack import PASSWORD, Browserless

pytestmark = pytest.mark.slow


def signed_in(stack, address: str) -> Browserless:
    stack.create_user(address)
    b = Browserless(stack.url)
    assert b.login(address) == 302
    return b


def test_list_search_view_release_and_delete(stack):
    b = signed_in(stack, "ann@example.com")
    spam = stack.quarantine("ann@example.com", subject="Cheap watches", body="<p>buy</p>")
    other = stack.quarantine("ann@example.com", subject="Lottery news")
    stack.wait_listed("ann@example.com", spam)
    stack.wait_listed("ann@example.com", other)
    status, _, page = b.request("GET", "/quarantine")
    assert status == 200 and "Cheap watches" in page and "Lottery news" in page
    status, _, page = b.request("GET", "/quarantine?q=watches")
    assert "Cheap watches" in page and "Lottery news" not in page
    status, _, page = b.request("GET", f"/quarantine/{spam}")
    assert status == 200 and "TEST_RULE" in page and "Cheap watches" in page

    token = b.csrf("/quarantine")
    status, _, page = b.request("POST", f"/quarantine/{spam}/release", {"csrf": token})
    assert status == 200 and "released" in page and "promo@shop.example" in page  # offers the allow list
    again = b.request("POST", f"/quarantine/{spam}/release", {"csrf": token})
    assert again[0] == 409 and "already released" in again[2]
    released = [m for m in stack.routed("mail.deliver", timeout=3) if m.message_id == spam]
    assert len(released) == 1 and released[0].action == "deliver" and released[0].reason == "released"
    assert b"Cheap watches" in released[0].raw
    events = [StatsEvent.decode(r.value) for r in read_topic(stack.broker.bootstrap, "mail.events",
                                                              lambda r: False, 2)]
    assert any(e.action == "release" for e in events)

    status, headers, _ = b.request("POST", f"/quarantine/{other}/delete", {"csrf": token})
    assert status == 302 and "deleted" in headers["location"]
    status, _, page = b.request("GET", "/quarantine")
    assert "Lottery news" not in page and "Cheap watches" not in page


def test_paging(stack):
    b = signed_in(stack, "pager@example.com")
    ids = [stack.quarantine("pager@example.com", subject=f"Offer number {i:02d}") for i in range(30)]
    stack.wait_listed("pager@example.com", ids[-1])
    for mid in ids:
        stack.wait_listed("pager@example.com", mid)
    _, _, first = b.request("GET", "/quarantine")
    _, _, second = b.request("GET", "/quarantine?page=2")
    shown_first = sum(f"Offer number {i:02d}" in first for i in range(30))
    shown_second = sum(f"Offer number {i:02d}" in second for i in range(30))
    assert (shown_first, shown_second) == (25, 5) and "Page 2 of 2" in second


def test_settings_take_effect_on_the_next_message(stack):
    b = signed_in(stack, "cy@example.com")
    token = b.csrf("/settings")
    status, _, page = b.request("POST", "/settings", {"csrf": token, "filtering": "off", "allow": "",
                                                      "block": "", "level_spam": "default"})
    assert status == 200 and "saved" in page
    mid = stack.quarantine("cy@example.com", spam=95.0)
    assert stack.wait_routed("mail.deliver", mid, "cy@example.com").reason == "filtering_off"
    virus = stack.quarantine("cy@example.com", spam=0.0, virus="Eicar-Test-Signature")
    assert stack.wait_routed("mail.quarantine", virus, "cy@example.com").reason == "virus"
    status, _, page = b.request("POST", "/settings", {"csrf": token, "filtering": "on", "allow": "",
                                                      "block": "shop.example", "level_spam": "lenient"})
    assert status == 200
    blocked = stack.quarantine("cy@example.com", spam=0.0)
    assert stack.wait_routed("mail.quarantine", blocked, "cy@example.com").reason == "blocked_sender"
    _, _, page = b.request("GET", "/settings")
    assert 'value="lenient" selected' in page and "shop.example" in page


def test_bad_settings_are_refused_with_a_clear_error(stack):
    b = signed_in(stack, "dee@example.com")
    token = b.csrf("/settings")
    status, _, page = b.request("POST", "/settings", {"csrf": token, "filtering": "on",
                                                      "allow": "not-a-domain", "block": ""})
    assert status == 400 and "neither an email address nor a domain" in page


def test_virus_cannot_be_released(stack):
    b = signed_in(stack, "eve@example.com")
    mid = stack.quarantine("eve@example.com", spam=0.0, virus="Eicar-Test-Signature")
    stack.wait_listed("eve@example.com", mid)
    status, _, page = b.request("POST", f"/quarantine/{mid}/release", {"csrf": b.csrf("/quarantine")})
    assert status == 409 and "virus cannot be released" in page


def test_release_link_from_a_digest_is_idempotent_and_refuses_bad_tokens(stack):
    stack.create_user("fay@example.com")
    mid = stack.quarantine("fay@example.com", subject="Digest item")
    stack.wait_listed("fay@example.com", mid)
    ring = Keyring.load(stack.tmp / "keys.json")
    token = signed_links.sign(ring, "example", "release", {"m": mid, "r": "fay@example.com"}, 3600)
    anon = Browserless(stack.url)
    status, _, page = anon.request("GET", f"/r/{token}")
    assert status == 200 and "Digest item" in page  # GET only asks: link scanners release nothing
    assert not [m for m in stack.routed("mail.deliver", timeout=1) if m.message_id == mid]
    assert anon.request("POST", f"/r/{token}")[0] == 200
    status, _, page = anon.request("POST", f"/r/{token}")
    assert status == 200 and "already released" in page
    assert len([m for m in stack.routed("mail.deliver", timeout=2) if m.message_id == mid]) == 1
    expired = signed_links.sign(ring, "example", "release", {"m": mid, "r": "fay@example.com"}, 10,
                                now=time.time() - 60)
    status, _, page = anon.request("GET", f"/r/{expired}")
    assert status == 400 and "expired" in page
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    status, _, page = anon.request("POST", f"/r/{tampered}")
    assert status == 400 and "not valid" in page
    wrong_action = signed_links.sign(ring, "example", "open", {"r": "fay@example.com"}, 3600)
    assert anon.request("GET", f"/r/{wrong_action}")[0] == 400


def test_open_link_signs_the_user_in(stack):
    ring = Keyring.load(stack.tmp / "keys.json")
    token = signed_links.sign(ring, "example", "open", {"r": "gil@example.com"}, 3600)
    b = Browserless(stack.url)
    status, headers, _ = b.request("GET", f"/open/{token}")
    assert status == 302 and headers["location"] == "/quarantine"
    status, _, page = b.request("GET", "/quarantine")
    assert status == 200 and "gil@example.com" in page


def test_wrong_password_is_refused_and_the_account_locks(stack):
    stack.create_user("hal@example.com")
    b = Browserless(stack.url)
    assert b.login("hal@example.com", "wrong password 123") == 401
    assert b.login("nobody@example.com", "wrong password 123") == 401
    assert b.login("someone@elsewhere.example", "wrong password 123") == 401
    for _ in range(4):
        b.login("hal@example.com", "wrong password 123")
    assert b.login("hal@example.com", PASSWORD) == 429  # locked even with the right password
