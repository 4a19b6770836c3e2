"""Users change their own password in the Message Center: checked like a sign-in, other sessions ended."""

from __future__ import annotations

import pytest

from tests.web.stack import PASSWORD, Browserless

pytestmark = pytest.mark.slow

NEW = "a brand new passphrase 42"
FORM = "/settings/password"


def change(b: Browserless, current: str, new: str, confirm: str | None = None) -> tuple[int, dict, str]:
    return b.request("POST", FORM, {"csrf": b.csrf(FORM), "current": current, "new": new,
                                    "confirm": new if confirm is None else confirm})


def test_password_change_checks_its_input_and_ends_other_sessions(stack):
    address = "pwd@example.com"
    stack.create_user(address)
    b, other_device = Browserless(stack.url), Browserless(stack.url)
    assert b.login(address) == 302 and other_device.login(address) == 302
    status, _, page = b.request("GET", "/settings")
    assert status == 200 and f'href="{FORM}"' in page

    status, _, page = change(b, PASSWORD, NEW, NEW + "x")
    assert status == 400 and "differ" in page
    status, _, page = change(b, PASSWORD, "short")
    assert status == 400 and "at least 10 characters" in page
    status, _, page = change(b, PASSWORD, PASSWORD)
    assert status == 400 and "must differ" in page
    status, _, page = change(b, "not my password at all", NEW)
    assert status == 401 and "current password is wrong" in page
    assert b.request("POST", FORM, {"csrf": "0" * 64, "current": PASSWORD, "new": NEW, "confirm": NEW})[0] == 403

    status, headers, _ = change(b, PASSWORD, NEW)
    assert status == 302 and headers["location"] == "/settings?done=password"
    status, _, page = b.request("GET", headers["location"])
    assert status == 200 and "Your password is changed" in page  # this browser stays signed in
    assert other_device.request("GET", "/quarantine")[0] == 302  # the other one is signed out

    fresh = Browserless(stack.url)
    assert fresh.login(address, PASSWORD) == 401
    assert fresh.login(address, NEW) == 302
    assert NEW not in stack.logs() and PASSWORD not in stack.logs()


def test_wrong_current_passwords_lock_like_sign_in(stack):
    address = "pwlock@example.com"
    stack.create_user(address)
    b = Browserless(stack.url)
    assert b.login(address) == 302
    statuses = [change(b, f"wrong guess number {i}", NEW)[0] for i in range(6)]
    assert statuses == [401] * 4 + [429] * 2  # the fifth failure locks, as at sign-in
    assert change(b, PASSWORD, NEW)[0] == 429  # locked even with the right password
