from pathlib import Path

import pytest

from postwarden.config import ConfigError, load_settings, load_tenants

GOOD = """
tenants:
  - id: acme
    domains: [acme.example]
    relay_networks: [192.0.2.0/24]
    downstream: [{host: mx.acme.example, port: 25}]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tenants.yaml"
    p.write_text(text)
    return p


def test_shipped_example_loads_and_routes_by_domain():
    tenants = load_tenants(None)
    t = tenants.for_address("Alice@Example.COM")
    assert t is not None and t.id == "example"
    assert tenants.for_address("someone@elsewhere.example") is None
    assert t.allows_relay_from("127.0.0.1") and t.allows_relay_from("::1")
    assert not t.allows_relay_from("198.51.100.7")


def test_defaults_fill_retention_and_digest(tmp_path):
    t = load_tenants(write(tmp_path, GOOD)).get("acme")
    assert t.quarantine_retention_days == 14
    assert t.digest.interval_seconds == 86400


@pytest.mark.parametrize("bad, field, words", [
    (GOOD.replace("[acme.example]", "[not a domain]"), "tenants.0.domains", "not a domain name"),
    (GOOD.replace("192.0.2.0/24", "192.0.2.0/99"), "tenants.0.relay_networks", "not an IP network"),
    (GOOD.replace("port: 25", "port: 70000"), "tenants.0.downstream.0.port", "less than or equal to 65535"),
    (GOOD.replace("id: acme", "id: 'Acme Corp!'"), "tenants.0.id", "should match pattern"),
    (GOOD + "    quarantine_retention_days: 0\n", "tenants.0.quarantine_retention_days", "greater than or equal to 1"),
    (GOOD + "    digest: {every: 11d}\n", "tenants.0.digest.every", "between 1h and 10d"),
    (GOOD + "    digest: {every: weekly}\n", "tenants.0.digest.every", "number of hours or days"),
    (GOOD + "    colour: blue\n", "tenants.0.colour", "Extra inputs are not permitted"),
    (GOOD.replace("    downstream: [{host: mx.acme.example, port: 25}]\n", ""), "tenants.0.downstream", "Field required"),
])
def test_each_bad_field_names_file_and_field(tmp_path, bad, field, words):
    path = write(tmp_path, bad)
    with pytest.raises(ConfigError) as err:
        load_tenants(path)
    text = str(err.value)
    assert str(path) in text
    assert f"{field}:" in text
    assert words in text


def test_domain_owned_by_two_tenants_is_rejected(tmp_path):
    twice = GOOD + GOOD.split("tenants:\n", 1)[1].replace("id: acme", "id: other")
    with pytest.raises(ConfigError, match="'acme.example' belongs to both 'acme' and 'other'"):
        load_tenants(write(tmp_path, twice))


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_tenants(write(tmp_path, "tenants: [\n"))
    with pytest.raises(ConfigError, match="cannot read tenants file .*nope.yaml"):
        load_tenants(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_tenants(write(tmp_path, "- just a list\n"))


@pytest.mark.parametrize("name, value, words", [
    ("POSTWARDEN_SMTP_PORT", "smtp", "valid integer"),
    ("POSTWARDEN_SMTP_PORT", "0", "greater than or equal to 1"),
    ("POSTWARDEN_BOOTSTRAP_SERVERS", "broker-without-port", "is not host:port"),
    ("POSTWARDEN_CLICKHOUSE_URL", "http://ch:8123", "must start with clickhouse://"),
    ("POSTWARDEN_PRODUCE_TIMEOUT", "-1", "greater than 0"),
    ("POSTWARDEN_LOG_LEVEL", "LOUD", "should match pattern"),
])
def test_each_bad_environment_variable_is_named(name, value, words):
    with pytest.raises(ConfigError) as err:
        load_settings({name: value})
    assert f"{name}: " in str(err.value)
    assert words in str(err.value)


def test_environment_parsing():
    s = load_settings({"POSTWARDEN_BOOTSTRAP_SERVERS": "a:9092, b:9093", "POSTWARDEN_SMTP_PORT": "25",
                       "UNRELATED": "x"})
    assert s.bootstrap_list == ["a:9092", "b:9093"]
    assert s.smtp_port == 25


def test_cli_reports_bad_tenants_file_and_exits_2(tmp_path, monkeypatch, capsys):
    from postwarden.cli import main

    monkeypatch.setenv("POSTWARDEN_TENANTS_FILE", str(write(tmp_path, "tenants: []\n")))
    monkeypatch.setenv("POSTWARDEN_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["ingest"]) == 2
    err = capsys.readouterr().err
    assert "tenants.yaml" in err and "tenants: List should have at least 1 item" in err
