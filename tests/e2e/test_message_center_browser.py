"""The Message Center in headless Chromium (Debian's), with mail coming in through SMTP ingest.

Screenshots of every page land in test-artifacts/message-center/.
"""

from __future__ import annotations

import http.server
import smtplib
import sys
import threading
import time
from collections.abc import Iterator
import email.policy
from email.message import EmailMessage

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from postwarden.local_services import free_port
from tests.conftest import ARTIFACTS
from tests.web.stack import PASSWORD, Stack

pytestmark = pytest.mark.slow
SHOTS = ARTIFACTS / "message-center"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class Recorder(http.server.ThreadingHTTPServer):
    """A loopback server that records every request: tracking pixels, and the provider's portal page."""

    def __init__(self, port: int, page: bytes = b"") -> None:
        self.hits: list[str] = []
        self.page = page
        super().__init__(("127.0.0.1", port), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request, client_address) -> None:
        # Chromium drops a request it no longer needs (a favicon, a frame) when the page
        # navigates on; the hit is already recorded. Anything else is still reported.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.server.page)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("browser"), ingest=True, delivery=True)
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


def smtp_send(stack: Stack, to: str, msg: EmailMessage) -> str:
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail("promo@shop.example")
        assert s.rcpt(to)[0] == 250
        code, reply = s.data(msg.as_bytes(policy=email.policy.SMTP))
        assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]


def spam(to: str, subject: str, tracker_port: int | None = None) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Promo <promo@shop.example>", to, subject
    # Unmistakable spam for the real scoring engine, but no blocked attachment type:
    # the attachment policy would hold it as dangerous, and those are never releasable.
    text = ("You are a lottery winner! Buy VIAGRA and CIALIS at 80% OFF, no prescription needed. "
            "100% GUARANTEED. Click here to claim your prize: http://192.0.2.45/order.php?id=7781 "
            "Act now! This offer expires in 24 hours. To be removed reply with REMOVE.")
    m.set_content(text)
    if tracker_port:
        m.add_alternative(f'<p>You are a <b>lottery winner</b>! {text}</p>'
                          f'<img src="http://127.0.0.1:{tracker_port}/pixel.gif" alt="pixel">'
                          f'<script>document.title="owned"</script>'
                          f'<a href="javascript:alert(1)">claim</a>', subtype="html")
        m.add_attachment(b"<script>alert('run me')</script>", maintype="text",
                         subtype="html", filename="invoice.html")
    return m


def sign_in(page: Page, stack: Stack, address: str, shot: str | None = None,
            password: str = PASSWORD) -> None:
    page.goto(stack.url + "/login")
    if shot:
        page.screenshot(path=str(SHOTS / shot), full_page=True)
    page.fill("#address", address)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert page.url.endswith("/quarantine"), page.content()


def reload_until(page: Page, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in page.content():
        assert time.monotonic() < deadline, f"{text!r} never shown"
        time.sleep(0.5)
        page.reload()


def test_sign_in_list_view_release_and_allow(stack, browser):
    tracker = Recorder(free_port())
    stack.create_user("bella@example.com")
    mid = smtp_send(stack, "bella@example.com", spam("bella@example.com", "Claim your prize", tracker.server_port))
    smtp_send(stack, "bella@example.com", spam("bella@example.com", "Second offer"))
    ctx = browser.new_context()
    page = ctx.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    sign_in(page, stack, "bella@example.com", shot="01-sign-in.png")
    reload_until(page, "Second offer")
    reload_until(page, "Claim your prize")
    page.screenshot(path=str(SHOTS / "02-quarantine-list.png"), full_page=True)
    page.fill("input[name=q]", "prize")
    page.click(".search button")
    page.wait_for_url("**q=prize**")
    assert "Claim your prize" in page.content() and "Second offer" not in page.content()
    page.screenshot(path=str(SHOTS / "03-search.png"), full_page=True)

    page.click(f"a[href='/quarantine/{mid}']")
    page.wait_for_selector("#body")
    body = page.inner_html("#body")
    assert "lottery winner" in body and "<script" not in body and "javascript:" not in body
    assert page.title() != "owned"
    assert "1 remote image(s) were not loaded" in page.content()
    assert "SPAM_MODEL" in page.content() and "URL_NUMERIC_IP" in page.content()  # rules that fired
    page.screenshot(path=str(SHOTS / "04-safe-view.png"), full_page=True)
    assert tracker.hits == [] and all(u.startswith(stack.url) for u in requested), requested
    link = page.locator(".attachments a")
    assert link.inner_text() == "invoice.html.download"
    resp = ctx.request.get(stack.url + link.get_attribute("href"))
    assert resp.headers["content-disposition"] == 'attachment; filename="invoice.html.download"'
    assert resp.headers["content-type"] == "application/octet-stream"
    assert resp.headers["x-content-type-options"] == "nosniff"

    page.click("button.release")
    page.wait_for_selector("#allow-sender")
    assert "released" in page.inner_text("#message")
    page.screenshot(path=str(SHOTS / "05-released.png"), full_page=True)
    released = stack.wait_routed("mail.deliver", mid, "bella@example.com")
    assert released.reason == "released" and b"Claim your prize" in released.raw
    # ... and the delivery sink hands it to the provider's mailbox server.
    deadline = time.monotonic() + 30
    while not (arrived := [m for m in stack.downstream.recorder.received if b"Claim your prize" in m.content]):
        assert time.monotonic() < deadline, "the released message never reached the mailbox server"
        time.sleep(0.2)
    assert [m.rcpt_tos for m in arrived] == [["bella@example.com"]]
    page.click("#allow-sender")
    page.wait_for_selector("#notice")
    assert "promo@shop.example" in page.input_value("#allow")
    page.screenshot(path=str(SHOTS / "06-settings-after-allow.png"), full_page=True)
    # Released exactly once, whatever the clicks.
    assert len([m for m in stack.routed("mail.deliver", timeout=2) if m.message_id == mid]) == 1
    ctx.close()
    tracker.close()


def test_delete_and_settings_change_apply_to_the_next_message(stack, browser):
    stack.create_user("carl@example.com")
    first = smtp_send(stack, "carl@example.com", spam("carl@example.com", "Held before"))
    ctx = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    page = ctx.new_page()
    sign_in(page, stack, "carl@example.com")
    reload_until(page, "Held before")
    page.screenshot(path=str(SHOTS / "07-phone-list.png"), full_page=True)
    page.once("dialog", lambda d: d.accept())
    page.click(f"li[data-id='{first}'] button.delete")
    page.wait_for_url("**done=deleted**")
    assert "Held before" not in page.content() and "The message was deleted." in page.content()

    page.goto(stack.url + "/settings")
    page.check("input[name=filtering][value=off]")
    page.select_option("#level_spam", "most_aggressive")
    page.screenshot(path=str(SHOTS / "08-settings.png"), full_page=True)
    page.click("#save")
    page.wait_for_selector("#notice")
    # Through the real pipeline: SMTP -> score -> policy with the new settings -> delivered.
    mid = smtp_send(stack, "carl@example.com", spam("carl@example.com", "After switching off"))
    assert stack.wait_routed("mail.deliver", mid, "carl@example.com").reason == "filtering_off"
    ctx.close()


def test_framed_single_sign_on_from_the_provider_portal(stack, browser):
    stack.create_user("dora@example.com")
    mid = stack.quarantine("dora@example.com", subject="Framed release")
    stack.wait_listed("dora@example.com", mid)
    status, out = stack.api("POST", "/api/v1/tenants/example/users/dora@example.com/sso-link", {"ttl": 120})
    assert status == 200
    # The portal is another site (localhost, not 127.0.0.1): the frame is cross-site, where
    # Chromium keeps only partitioned cookies.
    portal = Recorder(stack.portal_port, f'<h1>Provider portal</h1><iframe id="mc" src="{out["url"]}" '
                                          f'width="900" height="700"></iframe>'.encode())
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(f"http://localhost:{stack.portal_port}/")
    frame = page.frame_locator("#mc")
    frame.locator(f"li[data-id='{mid}']").wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "09-framed-list.png"), full_page=True)
    frame.locator(f"li[data-id='{mid}'] button.release").click()
    frame.locator("#allow-sender").wait_for()
    page.screenshot(path=str(SHOTS / "10-framed-released.png"), full_page=True)
    assert stack.wait_routed("mail.deliver", mid, "dora@example.com").reason == "released"
    cookie = [c for c in ctx.cookies() if c["name"] == "pw_session"][0]
    assert cookie["sameSite"] == "None" and cookie["secure"] and cookie.get("partitionKey")
    portal.close()

    # A portal origin the tenant did not allow cannot frame the Message Center.
    out = stack.api("POST", "/api/v1/tenants/example/users/dora@example.com/sso-link", {"ttl": 120})[1]
    rogue = Recorder(free_port(), f'<iframe id="mc" src="{out["url"]}"></iframe>'.encode())
    page.goto(f"http://localhost:{rogue.server_port}/")
    time.sleep(2)
    inner = [f for f in page.frames if f != page.main_frame]
    assert not inner or "Quarantine" not in (inner[0].content() if inner[0].url.startswith(stack.url) else "")
    page.screenshot(path=str(SHOTS / "11-framing-refused.png"), full_page=True)
    rogue.close()
    ctx.close()


def test_user_changes_their_password(stack, browser):
    new = "my own new passphrase 7"
    stack.create_user("finn@example.com")
    other_device = browser.new_context().new_page()
    sign_in(other_device, stack, "finn@example.com")
    ctx = browser.new_context(viewport={"width": 390, "height": 844})
    page = ctx.new_page()
    sign_in(page, stack, "finn@example.com")
    page.goto(stack.url + "/settings")
    page.click("#password-link")
    page.fill("#current", PASSWORD)
    page.fill("#new", new)
    page.fill("#confirm", new + " typo")
    page.click("#change")
    page.wait_for_selector("#error")
    assert "differ" in page.inner_text("#error")
    page.screenshot(path=str(SHOTS / "12-password-mismatch.png"), full_page=True)
    page.fill("#current", PASSWORD)
    page.fill("#new", new)
    page.fill("#confirm", new)
    page.click("#change")
    page.wait_for_selector("#notice")
    assert "password is changed" in page.inner_text("#notice")
    page.screenshot(path=str(SHOTS / "13-password-changed.png"), full_page=True)
    other_device.goto(stack.url + "/quarantine")
    assert "/login" in other_device.url  # the other device was signed out

    page.click("nav button[type=submit]")  # sign out
    page.wait_for_url("**/login**")
    page.fill("#address", "finn@example.com")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#error")
    assert "wrong" in page.inner_text("#error")
    page.screenshot(path=str(SHOTS / "14-old-password-refused.png"), full_page=True)
    sign_in(page, stack, "finn@example.com", password=new)
    page.screenshot(path=str(SHOTS / "15-signed-in-with-new-password.png"), full_page=True)
    other_device.context.close()
    ctx.close()
