"""Security of the Message Center and the provider API, tried against the running stack."""

from __future__ import annotations

import json
import re

import pytest

from tests.web.stack import KEY_EXAMPLE, KEY_OTHER, PASSWORD, Browserless

pytestmark = pytest.mark.slow


def signed_in(stack, address: str) -> Browserless:
    stack.create_user(address)
    b = Browserless(stack.url)
    assert b.login(address) == 302
    return b


def test_every_state_change_needs_the_session_csrf_token(stack):
    b = signed_in(stack, "csrf@example.com")
    mid = stack.quarantine("csrf@example.com")
    stack.wait_listed("csrf@example.com", mid)
    changes = [(f"/quarantine/{mid}/release", {}), (f"/quarantine/{mid}/delete", {}),
               ("/settings", {"filtering": "off"}), ("/settings/allow", {"sender": "x@y.example"}),
               ("/settings/password", {"current": PASSWORD, "new": "a new passw0rd!", "confirm": "a new passw0rd!"}),
               ("/logout", {})]
    for path, form in changes:
        assert b.request("POST", path, form)[0] == 403, path                       # no token
        assert b.request("POST", path, {**form, "csrf": "0" * 64})[0] == 403, path  # forged token
    # A valid token from another user's session does not work either.
    other = signed_in(stack, "csrf2@example.com")
    foreign = other.csrf("/quarantine")
    assert b.request("POST", f"/quarantine/{mid}/release", {"csrf": foreign})[0] == 403
    # Nor does the right token posted from another origin.
    token = b.csrf("/quarantine")
    assert b.request("POST", f"/quarantine/{mid}/delete", {"csrf": token},
                     headers={"Origin": "http://evil.example"})[0] == 403
    # Nothing happened: the message is still held, filtering still on.
    stack.wait_listed("csrf@example.com", mid)
    assert stack.api("GET", "/api/v1/tenants/example/users/csrf@example.com")[1]["effective"]["filtering"]
    # The sign-in form is protected too (login CSRF).
    anon = Browserless(stack.url)
    assert anon.request("POST", "/login", {"address": "csrf@example.com", "password": PASSWORD})[0] == 403


def test_no_user_reaches_another_users_message_by_its_id(stack):
    victim = signed_in(stack, "victim@example.com")
    mid = stack.quarantine("victim@example.com", subject="Private matter")
    stack.wait_listed("victim@example.com", mid)
    assert "Private matter" in victim.request("GET", f"/quarantine/{mid}")[2]
    attacker = signed_in(stack, "attacker@example.com")
    token = attacker.csrf("/quarantine")
    status, _, page = attacker.request("GET", f"/quarantine/{mid}")
    assert status == 404 and "Private matter" not in page
    assert attacker.request("GET", f"/quarantine/{mid}/attachments/0")[0] == 404
    status, _, page = attacker.request("POST", f"/quarantine/{mid}/release", {"csrf": token})
    assert status == 409 and "no such message" in page
    attacker.request("POST", f"/quarantine/{mid}/delete", {"csrf": token})
    for guess in (mid[:-1] + ("0" if mid[-1] != "0" else "1"), "../victim@example.com", "0" * 32):
        assert attacker.request("GET", f"/quarantine/{guess}")[0] == 404
    # The victim's message is untouched and never left the quarantine.
    stack.wait_listed("victim@example.com", mid)
    assert not [m for m in stack.routed("mail.deliver", timeout=1) if m.message_id == mid]
    # Query strings cannot switch the user either.
    page = attacker.request("GET", "/quarantine?address=victim@example.com&r=victim@example.com")[2]
    assert "Private matter" not in page


def test_tenants_are_isolated_in_the_api(stack):
    stack.create_user("iso@other.example")
    mid = stack.quarantine("iso@other.example", subject="Other tenant mail")
    stack.wait_listed("iso@other.example", mid)
    base = "/api/v1/tenants/other/users/iso@other.example"
    # example's key opens nothing of tenant other, whatever the path says.
    assert stack.api("GET", base, key=KEY_EXAMPLE)[0] == 401
    assert stack.api("GET", base + "/quarantine", key=KEY_EXAMPLE)[0] == 401
    assert stack.api("POST", base + f"/quarantine/{mid}/release", key=KEY_EXAMPLE)[0] == 401
    assert stack.api("GET", "/api/v1/tenants/example/users/iso@other.example/quarantine")[0] == 404
    assert stack.api("PUT", "/api/v1/tenants/example/users/iso@other.example", {"password": "x" * 12})[0] == 404
    assert stack.api("DELETE", "/api/v1/tenants/example/users/iso@other.example")[0] == 404
    status, out = stack.api("POST", "/api/v1/tenants/example/users:batch",
                            raw=b'{"op": "remove", "address": "iso@other.example"}\n')
    assert status == 207 and out["results"][0]["status"] == "invalid"
    assert stack.api("GET", base, key="")[0] == 401
    assert stack.api("GET", base, key="pwk_guess")[0] == 401
    status, out = stack.api("GET", base + "/quarantine", key=KEY_OTHER)
    assert status == 200 and [e["message_id"] for e in out["entries"]] == [mid]
    # ... and the user still exists with their mail.
    assert stack.api("GET", base, key=KEY_OTHER)[1]["exists"]


def test_security_headers_on_every_page(stack):
    b = signed_in(stack, "hdr@example.com")
    mid = stack.quarantine("hdr@example.com")
    stack.wait_listed("hdr@example.com", mid)
    for path in ("/login", "/quarantine", f"/quarantine/{mid}", "/settings", "/api/v1/openapi.json",
                 "/nonexistent"):
        _, h, _ = b.request("GET", path)
        csp = h["content-security-policy"]
        assert "default-src 'self'" in csp and "img-src 'self' data:" in csp and "script-src 'self'" in csp
        assert "frame-ancestors" in csp, path
        assert h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"] == "same-origin"
    _, h, _ = Browserless(stack.url).request("GET", "/login")
    assert "frame-ancestors 'none'" in h["content-security-policy"] and h["x-frame-options"] == "DENY"
    _, h, _ = b.request("GET", "/quarantine")
    assert f"frame-ancestors http://localhost:{stack.portal_port}" in h["content-security-policy"]
    assert h["cache-control"] == "no-store"
    session_cookie = [c for c in h["set-cookie"] if c.startswith("pw_session=")][0]
    assert "HttpOnly" in session_cookie and "SameSite=Lax" in session_cookie


def test_session_fixation_is_prevented(stack):
    stack.create_user("fix@example.com")
    b = Browserless(stack.url)
    planted = "attacker-chosen-value"
    b.cookies["pw_session"] = planted
    assert b.login("fix@example.com") == 302
    assert b.cookies["pw_session"] != planted
    # A session from before sign-in (the planted value) is not signed in.
    status, _, _ = b.request("GET", "/quarantine", cookies={"pw_session": planted})
    assert status == 302
    # Two sign-ins never share a session id.
    other = Browserless(stack.url)
    assert other.login("fix@example.com") == 302
    assert other.cookies["pw_session"] != b.cookies["pw_session"]
    # Signing out ends every session of the user, including a copied cookie.
    stolen = dict(b.cookies)
    b.request("POST", "/logout", {"csrf": b.csrf("/quarantine")})
    assert b.request("GET", "/quarantine", cookies=stolen)[0] == 302
    assert other.request("GET", "/quarantine")[0] == 302


def test_expired_and_forged_sessions_are_refused(stack):
    from postwarden.keyring import Keyring
    from web import sessions

    ring = Keyring.load(stack.tmp / "keys.json")
    stack.create_user("idle@example.com")
    import time

    old = sessions.new_session("example", "idle@example.com", 1, False, time.time() - 3600)
    idle = sessions.encode(ring, old, now=time.time() - sessions.IDLE_SECONDS - 5)
    b = Browserless(stack.url)
    assert b.request("GET", "/quarantine", cookies={"pw_session": idle})[0] == 302
    fresh = sessions.encode(ring, old, now=time.time())
    assert b.request("GET", "/quarantine", cookies={"pw_session": fresh})[0] == 200
    forged = fresh[:-2] + ("xx" if not fresh.endswith("xx") else "yy")
    assert b.request("GET", "/quarantine", cookies={"pw_session": forged})[0] == 302


def test_passwords_and_secrets_never_appear_in_logs(stack):
    secret_password = "Sup3r-Secret-Passw0rd-Zebra"
    stack.create_user("logs@example.com", password=secret_password)
    b = Browserless(stack.url)
    assert b.login("logs@example.com", secret_password) == 302
    b.login("logs@example.com", "Wrong-Secret-Attempt-Yak")
    mid = stack.quarantine("logs@example.com", subject="Subject-Must-Not-Leak", body="Body-Must-Not-Leak")
    stack.wait_listed("logs@example.com", mid)
    b.request("GET", f"/quarantine/{mid}")
    stack.api("POST", "/api/v1/tenants/example/users/logs@example.com/sso-link", {"ttl": 60})
    logs = stack.logs()
    assert mid in logs  # the logs are there, with message ids
    ring_text = (stack.tmp / "keys.json").read_text()
    master = re.search(r'"key": "([^"]+)"', ring_text).group(1)
    for secret in (secret_password, "Wrong-Secret-Attempt-Yak", "Subject-Must-Not-Leak", "Body-Must-Not-Leak",
                   "logs@example.com", "promo@shop.example", KEY_EXAMPLE, master, b.cookies["pw_session"],
                   "scrypt$"):
        assert secret not in logs, secret
    for line in logs.splitlines():
        if line.startswith("{"):
            json.loads(line)  # every log line is structured


def test_login_is_rate_limited_per_client(stack):
    b = Browserless(stack.url)
    statuses = [b.login(f"nobody{i}@example.com", "wrong password 123") for i in range(22)]
    assert statuses[0] == 401 and statuses[-1] == 429
