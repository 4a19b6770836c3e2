"""Tenant and process settings of the ingest node: each field validated, each error named."""

import io
import sys

import pytest

from ingest.passwords import hash_password, verify_password
from ingest.server import IngestNode
from postwarden.cli import main
from postwarden.config import ConfigError, load_settings, load_tenants
from tests.ingest.conftest import ingest_settings

BASE = """
tenants:
  - id: acme
    domains: [acme.example]
    relay_networks: [192.0.2.0/24]
    downstream: [{host: mx.acme.example}]
"""


def load(tmp_path, extra: str):
    path = tmp_path / "tenants.yaml"
    path.write_text(BASE + extra)
    return load_tenants(path)


def test_recipient_list_routes_known_users_only(tmp_path):
    t = load(tmp_path, "    recipients: [Alice@acme.example, bob@ACME.example]\n").get("acme")
    assert t.knows_recipient("alice@acme.example") and t.knows_recipient("BOB@acme.example")
    assert not t.knows_recipient("carol@acme.example")
    assert load(tmp_path, "").get("acme").knows_recipient("anyone@acme.example")


def test_recipients_file_is_read_relative_to_the_tenants_file(tmp_path):
    (tmp_path / "acme.txt").write_text("# users\nalice@acme.example\n\nbob@acme.example  # admin\n")
    t = load(tmp_path, "    recipients_file: acme.txt\n").get("acme")
    assert t.knows_recipient("bob@acme.example") and not t.knows_recipient("eve@acme.example")


@pytest.mark.parametrize("extra, words", [
    ("    recipients: [not-an-address]\n", "tenants.0.recipients: Value error, 'not-an-address' is not an email address"),
    ("    recipients: [a@elsewhere.example]\n", "not in one of the tenant's domains"),
    ("    recipients: [a@acme.example]\n    recipients_file: x.txt\n", "set recipients or recipients_file, not both"),
    ("    recipients_file: missing.txt\n", "tenants.0.recipients_file: cannot read recipients file"),
    ("    require_tls: maybe\n", "tenants.0.require_tls: Input should be a valid boolean"),
    ("    auth: [{username: relay1, password_hash: hunter2}]\n", "tenants.0.auth.0.password_hash: Value error, must be a hash"),
    ("    auth: [{username: 'has space', password_hash: x}]\n", "tenants.0.auth.0.username"),
])
def test_bad_ingest_tenant_fields_name_the_field(tmp_path, extra, words):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, extra)
    assert str(tmp_path / "tenants.yaml") in str(err.value)
    assert words in str(err.value)


def test_bad_line_in_recipients_file_names_file_and_line(tmp_path):
    (tmp_path / "acme.txt").write_text("alice@acme.example\nmallory@evil.example\n")
    with pytest.raises(ConfigError, match=r"acme.txt:2: 'mallory@evil.example' is not an address"):
        load(tmp_path, "    recipients_file: acme.txt\n")


def test_smtp_login_must_be_unique_across_tenants(tmp_path):
    h = hash_password("correct horse battery")
    two = (BASE + f"    auth: [{{username: relay, password_hash: '{h}'}}]\n"
           + BASE.split("tenants:\n", 1)[1].replace("acme", "beta")
           + f"    auth: [{{username: relay, password_hash: '{h}'}}]\n")
    path = tmp_path / "tenants.yaml"
    path.write_text(two)
    with pytest.raises(ConfigError, match="SMTP login 'relay' appears twice"):
        load_tenants(path)


@pytest.mark.parametrize("name, value, words", [
    ("POSTWARDEN_SMTP_TLS_CERT_FILE", "/etc/cert.pem", "POSTWARDEN_SMTP_TLS_KEY_FILE: Value error, POSTWARDEN_SMTP_TLS_CERT_FILE and _KEY_FILE must be set together"),
    ("POSTWARDEN_PROXY_PROTOCOL", "perhaps", "POSTWARDEN_PROXY_PROTOCOL: Input should be a valid boolean"),
    ("POSTWARDEN_SMTP_MAX_RECIPIENTS", "0", "POSTWARDEN_SMTP_MAX_RECIPIENTS: Input should be greater than or equal to 1"),
    ("POSTWARDEN_SMTP_MAX_INVALID_RECIPIENTS", "0", "POSTWARDEN_SMTP_MAX_INVALID_RECIPIENTS: Input should be greater"),
    ("POSTWARDEN_SMTP_MAX_LINE_LENGTH", "80", "POSTWARDEN_SMTP_MAX_LINE_LENGTH: Input should be greater than or equal to 1001"),
    ("POSTWARDEN_SMTP_COMMAND_TIMEOUT", "0", "POSTWARDEN_SMTP_COMMAND_TIMEOUT: Input should be greater than 0"),
    ("POSTWARDEN_SMTP_DATA_TIMEOUT", "soon", "POSTWARDEN_SMTP_DATA_TIMEOUT: Input should be a valid number"),
    ("POSTWARDEN_SMTP_MAX_CONNECTIONS", "0", "POSTWARDEN_SMTP_MAX_CONNECTIONS: Input should be greater"),
    ("POSTWARDEN_SMTP_MAX_CONNECTIONS_PER_IP", "-1", "POSTWARDEN_SMTP_MAX_CONNECTIONS_PER_IP: Input should be greater"),
    ("POSTWARDEN_SMTP_MESSAGES_PER_IP_PER_MINUTE", "-1", "POSTWARDEN_SMTP_MESSAGES_PER_IP_PER_MINUTE: Input should be greater"),
    ("POSTWARDEN_SMTP_DRAIN_SECONDS", "-5", "POSTWARDEN_SMTP_DRAIN_SECONDS: Input should be greater"),
])
def test_bad_ingest_settings_name_the_variable(name, value, words):
    with pytest.raises(ConfigError) as err:
        load_settings({name: value})
    assert words in str(err.value)


def test_ingest_settings_defaults_and_proxy_flag_from_helm():
    s = load_settings({"POSTWARDEN_PROXY_PROTOCOL": "true"})
    assert s.proxy_protocol is True and s.smtp_tls_cert_file is None
    assert s.smtp_max_recipients == 100 and s.smtp_max_line_length == 4096


def test_message_size_beyond_the_record_limit_stops_the_node(tmp_path):
    with pytest.raises(ConfigError, match="POSTWARDEN_MAX_MESSAGE_SIZE=104857600 does not fit"):
        IngestNode(ingest_settings("127.0.0.1:1", tmp_path, POSTWARDEN_MAX_MESSAGE_SIZE=str(100 * 1024 * 1024)))


def test_password_hash_command_makes_a_salted_slow_hash(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))
    assert main(["smtp-password-hash"]) == 0
    first = capsys.readouterr().out.strip()
    assert first.startswith("scrypt$15$8$1$") and "correct" not in first
    assert verify_password("correct horse battery", first)
    assert not verify_password("correct horse batterY", first)
    assert hash_password("correct horse battery") != first  # salted
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["smtp-password-hash"]) == 2
    assert "at least 12 characters" in capsys.readouterr().err
