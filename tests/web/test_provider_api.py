"""The provider API: users, settings, passwords, quarantine, release, SSO links, batch and its CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.web.stack import KEY_EXAMPLE, Browserless

pytestmark = pytest.mark.slow
U = "/api/v1/tenants/example/users"


def test_openapi_document_is_served_and_describes_every_route(stack):
    status, doc = stack.api("GET", "/api/v1/openapi.json", key="")
    assert status == 200 and doc["openapi"].startswith("3.")
    paths = set(doc["paths"])
    assert {"/api/v1/tenants/{tenant}/users/{address}", "/api/v1/tenants/{tenant}/users:batch",
            "/api/v1/tenants/{tenant}/users/{address}/quarantine",
            "/api/v1/tenants/{tenant}/users/{address}/quarantine/{message_id}/release",
            "/api/v1/tenants/{tenant}/users/{address}/sso-link",
            "/api/v1/tenants/{tenant}/users/{address}/password"} == paths


def test_create_update_password_and_remove_a_user(stack):
    a = f"{U}/ivy@example.com"
    assert stack.api("GET", a)[0] == 404
    status, out = stack.api("PUT", a, {"settings": {"levels": {"bulk": "aggressive"}, "allow": ["@friends.example"]}})
    assert status == 200 and out["status"] == "ok"
    user = stack.api("GET", a)[1]
    assert user["effective"]["levels"]["bulk"] == "aggressive" and user["effective"]["allow"] == ["friends.example"]
    assert user["effective"]["levels"]["spam"] == "moderate" and not user["has_password"]
    assert stack.api("PUT", a + "/password", {"password": "a new long password"})[0] == 200
    assert Browserless(stack.url).login("ivy@example.com", "a new long password") == 302
    mid = stack.quarantine("ivy@example.com")
    stack.wait_listed("ivy@example.com", mid)
    status, out = stack.api("DELETE", a)
    assert status == 200 and out == {"status": "removed", "purged": 1}
    assert stack.api("GET", a)[0] == 404
    assert stack.api("GET", a + "/quarantine")[1]["total"] == 0
    assert Browserless(stack.url).login("ivy@example.com", "a new long password") == 401


@pytest.mark.parametrize("body, words", [
    ({"password": "short"}, "at least 10 characters"),
    ({"settings": {"levels": {"spam": "extreme"}}}, "is not one of"),
    ({"settings": {"filtering": "maybe"}}, "filtering must be"),
    ({"nickname": "x"}, "unknown fields: nickname"),
])
def test_bad_changes_are_refused_with_a_clear_error(stack, body, words):
    status, out = stack.api("PUT", f"{U}/jo@example.com", body)
    assert status == 400 and words in out["error"]


def test_bad_requests_are_refused_with_a_clear_error(stack):
    assert stack.api("PUT", f"{U}/not-an-address", {})[1]["error"].endswith("is not an email address")
    status, out = stack.api("PUT", f"{U}/jo@example.com", raw=b"{not json")
    assert status == 400 and out["error"] == "body must be JSON"
    status, out = stack.api("GET", f"{U}/jo@example.com/quarantine?limit=many")
    assert status == 400 and "integers" in out["error"]
    status, out = stack.api("POST", f"{U}/jo@example.com/sso-link", {"ttl": 999999})
    assert status == 400 and "ttl" in out["error"]
    assert stack.api("POST", f"{U}/jo@example.com/quarantine/nothex/release")[0] == 404


def test_list_and_release_through_the_api(stack):
    stack.create_user("kim@example.com")
    mid = stack.quarantine("kim@example.com", subject="API release")
    entry = stack.wait_listed("kim@example.com", mid)
    assert entry["subject"] == "API release" and entry["reason"] == "spam" and entry["rules"]
    status, out = stack.api("GET", f"{U}/kim@example.com/quarantine?q=api")
    assert out["total"] == 1
    assert stack.api("POST", f"{U}/kim@example.com/quarantine/{mid}/release")[1]["status"] == "released"
    assert stack.api("POST", f"{U}/kim@example.com/quarantine/{mid}/release")[1]["status"] == "already_released"
    assert len([m for m in stack.routed("mail.deliver", timeout=2) if m.message_id == mid]) == 1


def test_sso_link_signs_the_user_in(stack):
    status, out = stack.api("POST", f"{U}/lee@example.com/sso-link", {"ttl": 120})
    assert status == 200 and out["url"].startswith(stack.url + "/sso/")
    b = Browserless(stack.url)
    status, headers, _ = b.request("GET", out["url"][len(stack.url):])
    assert status == 302
    cookie = [c for c in headers["set-cookie"] if c.startswith("pw_session=")][0]
    assert "SameSite=None" in cookie and "Secure" in cookie and "Partitioned" in cookie
    assert "lee@example.com" in b.request("GET", "/quarantine")[2]


def test_batch_file_through_the_cli(stack, tmp_path):
    lines = [
        {"op": "upsert", "address": "m1@example.com", "password": "batch password 1", "settings": {"filtering": False}},
        {"op": "upsert", "address": "m2@example.net", "settings": {"block": ["spam.example"]}},
        {"op": "upsert", "address": "m3@other.example"},
        {"op": "promote", "address": "m1@example.com"},
        {"op": "upsert", "address": "m4@example.com", "password": "short"},
    ]
    f = tmp_path / "users.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    env = stack.env(POSTWARDEN_API_KEY=KEY_EXAMPLE)
    out = subprocess.run([sys.executable, "-m", "postwarden.cli", "users", "import", str(f), "--tenant", "example",
                          "--url", stack.url], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 1, out.stderr
    assert "6 change(s), 4 failed" in out.stdout
    assert "line 3: invalid: address is not in this tenant's domains" in out.stderr
    assert "line 4: invalid: op must be upsert or remove" in out.stderr
    assert "line 5: invalid: password must have at least 10 characters" in out.stderr
    assert "line 6: invalid" in out.stderr
    assert stack.api("GET", f"{U}/m1@example.com")[1]["effective"]["filtering"] is False
    assert stack.api("GET", f"{U}/m2@example.net")[1]["effective"]["block"] == ["spam.example"]
    missing_key = subprocess.run([sys.executable, "-m", "postwarden.cli", "users", "import", str(f), "--tenant",
                                  "example"], env=stack.env(), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert missing_key.returncode == 2 and "POSTWARDEN_API_KEY" in missing_key.stderr


def test_api_key_command_prints_a_key_and_its_hash(stack):
    out = subprocess.run([sys.executable, "-m", "postwarden.cli", "api-key", "new", "example"], env=stack.env(),
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0 and "pwk_" in out.stdout and "sha256:" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "postwarden.cli", "api-key", "new", "nope"], env=stack.env(),
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode == 2 and "no tenant 'nope'" in bad.stderr
