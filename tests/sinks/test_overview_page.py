"""The operator overview page in headless Chromium: login, charts as pictures, no personal data."""

from __future__ import annotations

import re
import time

import aiohttp
import pytest
from playwright.async_api import async_playwright

from postwarden.cli import main
from postwarden.config import load_settings
from postwarden.local_services import free_port
from sinks.operator_login import Sessions, check_hash_format, hash_password, verify_password
from sinks.overview_page import OverviewServer, panels
from tests.conftest import ARTIFACTS
from tests.sinks.stats_data import fill

PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def test_password_hashes_verify_and_refuse():
    assert verify_password(PASSWORD, HASH) and not verify_password("wrong", HASH)
    assert hash_password(PASSWORD) != HASH  # salted
    for bad in ("", "bcrypt$x", "scrypt$1024$8$1$AAAA$AAAA", "scrypt$x$8$1$AAAA$AAAA"):
        with pytest.raises(ValueError, match="POSTWARDEN_OPERATOR_PASSWORD_HASH"):
            check_hash_format(bad)
    with pytest.raises(ValueError, match="empty"):
        hash_password("")
    sessions = Sessions(lifetime=0.05)
    token = sessions.new()
    assert sessions.valid(token) and not sessions.valid("forged") and not sessions.valid(None)
    time.sleep(0.06)
    assert not sessions.valid(token)


def test_overview_command_refuses_missing_or_malformed_hash(monkeypatch, capsys):
    monkeypatch.delenv("POSTWARDEN_OPERATOR_PASSWORD_HASH", raising=False)
    assert main(["overview"]) == 2
    assert "POSTWARDEN_OPERATOR_PASSWORD_HASH" in capsys.readouterr().err
    monkeypatch.setenv("POSTWARDEN_OPERATOR_PASSWORD_HASH", "plaintext")
    assert main(["overview"]) == 2
    assert "expected scrypt" in capsys.readouterr().err


@pytest.fixture
async def overview(store, tmp_path):
    fill(store, int(time.time()))
    port = free_port()
    settings = load_settings({}, operator_password_hash=HASH, overview_port=port, data_dir=tmp_path)
    server = OverviewServer(settings, store)
    await server.start()
    yield f"http://127.0.0.1:{port}"
    await server.stop()


async def test_charts_need_a_login(overview):
    # unsafe: the jar otherwise drops cookies set by an IP-address host such as 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{overview}/charts/5.svg") as r:
            assert r.status == 401
        async with http.get(f"{overview}/", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login"
        async with http.post(f"{overview}/login", data={"password": "guess"}) as r:
            assert r.status == 401 and "Wrong password" in await r.text()
        async with http.post(f"{overview}/login", data={"password": PASSWORD}) as r:
            assert r.status == 200 and "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        async with http.get(f"{overview}/charts/5.svg?hours=6&tenant=acme") as r:
            assert r.status == 200 and r.content_type == "image/svg+xml"
            assert "<polyline" in await r.text()
        for bad in ("hours=2", "tenant=nobody", "tenant=x'%20OR%201=1"):
            async with http.get(f"{overview}/charts/5.svg?{bad}") as r:
                assert r.status == 400, bad
        async with http.get(f"{overview}/charts/999.svg") as r:
            assert r.status == 404


async def test_overview_in_headless_chromium(overview):
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(f"{overview}/")
            assert page.url.endswith("/login")
            await page.fill("input[name=password]", "not it")
            await page.click("button[type=submit]")
            assert await page.get_by_role("alert").inner_text() == "Wrong password."
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{overview}/")
            images = page.locator("img")
            assert await images.count() == len(panels())
            await page.wait_for_function(
                "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)", timeout=20000)
            await page.screenshot(path=str(ARTIFACTS / "operator-overview.png"), full_page=True)
            # Pictures, not tables of numbers; and nothing address- or IP-shaped on the page.
            assert await page.locator("table").count() == 0
            html = await page.content()
            assert not re.search(r"[\w.-]+@[\w-]+\.\w+|\b\d{1,3}(\.\d{1,3}){3}\b", html)
            await page.select_option("select[name=tenant]", "example")
            await page.click("text=Show")
            await page.wait_for_url(re.compile(r"tenant=example"))
            await page.wait_for_function(
                "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)", timeout=20000)
            await page.click("text=Sign out")
            await page.wait_for_url(f"{overview}/login")
            await page.goto(f"{overview}/")
            assert page.url.endswith("/login")
        finally:
            await browser.close()
