"""Tenant options of the Message Center: Default User, frame ancestors, hashed API keys; passwords."""

from __future__ import annotations

import pytest

from postwarden.config import ConfigError, load_tenants
from postwarden.passwords import PasswordError, hash_password, verify_password

BASE = """
tenants:
  - id: acme
    domains: [acme.example]
    relay_networks: [192.0.2.0/24]
    downstream: [{host: mx.acme.example}]
"""


def tenants(tmp_path, extra: str):
    p = tmp_path / "t.yaml"
    p.write_text(BASE + extra)
    return load_tenants(p)


def test_message_center_options_load(tmp_path):
    t = tenants(tmp_path, "    default_user: {filtering: false, levels: {spam: lenient}}\n"
                          "    frame_ancestors: [https://portal.acme.example]\n"
                          f"    api_keys: ['sha256:{'a' * 64}']\n").get("acme")
    assert t.default_user.filtering is False and t.default_user.levels == {"spam": "lenient"}
    assert t.frame_ancestors == ["https://portal.acme.example"]


@pytest.mark.parametrize("extra, words", [
    ("    default_user: {levels: {spam: extreme}}\n", "tenants.0.default_user.levels"),
    ("    frame_ancestors: ['*']\n", "is not an origin"),
    ("    frame_ancestors: ['https://a.example; script-src *']\n", "is not an origin"),
    ("    api_keys: [plaintext-key]\n", "API keys are stored hashed"),
])
def test_bad_message_center_options_name_the_field(tmp_path, extra, words):
    with pytest.raises(ConfigError, match=words):
        tenants(tmp_path, extra)


def test_passwords_are_salted_slow_hashes_and_verify():
    a, b = hash_password("correct horse battery", cost=10), hash_password("correct horse battery", cost=10)
    assert a != b and a.startswith("scrypt$1024$") and "correct" not in a
    assert verify_password("correct horse battery", a)
    assert not verify_password("correct horse batterx", a)
    assert not verify_password("anything at all", None)
    assert not verify_password("anything at all", "md5$garbage")
    with pytest.raises(PasswordError, match="at least 10 characters"):
        hash_password("short")
