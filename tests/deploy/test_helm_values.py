"""values.schema.json: bad values stop helm with a message naming the field."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from tests.deploy.helmchart import CHART, VALUES_FILES

# (helm arguments, text that must appear in helm's error output)
REJECTED = {
    "negative replicas": (["--set", "ingest.replicas=-1"], "ingest.replicas: Must be greater than or equal to 0"),
    "unknown top-level key": (["--set", "ingset.replicas=2"], "Additional property ingset is not allowed"),
    "unknown nested key": (["--set", "worker.replica=2"], "worker: Additional property replica is not allowed"),
    "wrong type": (["--set-string", "worker.replicas=two"], "worker.replicas: Invalid type. Expected: integer"),
    "bad enum": (["--set", "config.logLevel=LOUD"], "config.logLevel: config.logLevel must be one of"),
    "zero partitions": (["--set", "kafka.partitions=0"], "kafka.partitions: Must be greater than or equal to 1"),
    "empty bootstrap": (["--set", "kafka.bootstrapServers="], "kafka.bootstrapServers: Does not match pattern"),
    "bootstrap without port": (["--set", "kafka.bootstrapServers=kafka"], "kafka.bootstrapServers"),
    "kafka tls typo": (["--set", "kafka.tls.enable=true"], "kafka.tls: Additional property enable is not allowed"),
    "kafka sasl mechanism": (["--set", "kafka.sasl.mechanism=GSSAPI"], "kafka.sasl.mechanism"),
    "kafka sasl password inline": (["--set", "kafka.sasl.password=x"],
                                   "kafka.sasl: Additional property password is not allowed"),
    "password in clickhouse url": (["--set", "clickhouse.url=clickhouse://u:secret@ch:9000/db"], "clickhouse.url"),
    "old key settings": (["--set", "secrets.quarantineKey=abc"], "Additional property secrets is not allowed"),
    "empty keys secret key": (["--set", "keys.secretKey="], "keys.secretKey: String length must be greater"),
    "resolver by name": (["--set", "scoring.dnsServers={dns.google}"], "scoring.dnsServers.0: Does not match pattern"),
    "zero dns timeout": (["--set", "scoring.dnsTimeoutSeconds=0"], "scoring.dnsTimeoutSeconds"),
    "short smtp lines": (["--set", "ingest.limits.maxLineLength=512"],
                         "ingest.limits.maxLineLength: Must be greater than or equal to 1001"),
    "unknown smtp limit": (["--set", "ingest.limits.maxMessages=5"],
                           "ingest.limits: Additional property maxMessages is not allowed"),
    "k-anonymity zero": (["--set", "stats.kAnonymity=0"], "stats.kAnonymity: Must be greater than or equal to 1"),
    "public url without scheme": (["--set", "config.publicUrl=quarantine.example.com"], "config.publicUrl"),
    "notify from without domain": (["--set", "config.notifyFrom=postmaster"], "config.notifyFrom"),
    "notifier smtp egress is gone": (["--set", "notifier.smtpTo.ports={25}"],
                                     "notifier: Additional property smtpTo is not allowed"),
    "traffic policy": (["--set", "ingest.service.externalTrafficPolicy=Remote"],
                       "ingest.service.externalTrafficPolicy"),
    "missing limits": (["--set", "stats.resources.limits=null"], "stats.resources: limits is required"),
    "writable root fs": (["--set", "securityContext.readOnlyRootFilesystem=false"],
                         "securityContext.readOnlyRootFilesystem"),
    "autoscaling percent": (["--set", "ingest.autoscaling.targetCPUUtilizationPercentage=150"],
                            "ingest.autoscaling.targetCPUUtilizationPercentage: Must be less than or equal to 100"),
    "bad cidr": (["--set", "kafka.networkPolicy.cidrs={kafka.internal}"], "kafka.networkPolicy.cidrs.0"),
    "no tenants": (["--set", "tenants=null"], "(root): tenants is required"),
    "empty tenants": (["--set-json", "tenants=[]"], "tenants: Array must have at least 1 items"),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_schema_rejects_bad_values(helm, case):
    args, message = REJECTED[case]
    proc = helm.template(*args, check=False)
    assert proc.returncode != 0, f"helm accepted {args}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_schema_rejects_incomplete_tenant(helm, tmp_path):
    values = tmp_path / "tenant.yaml"
    values.write_text(yaml.safe_dump({"tenants": [
        {"id": "Bad Id", "domains": ["example.com"], "relay_networks": ["192.0.2.0/24"], "spam_threshold": 101},
    ]}))
    proc = helm.template("-f", str(values), check=False)
    assert proc.returncode != 0
    for field in ("tenants.0: downstream is required", "tenants.0.id: Does not match pattern",
                  "tenants.0.spam_threshold: Must be less than or equal to 100"):
        assert field in proc.stderr, proc.stderr


def test_lint_fails_on_bad_values(helm):
    proc = helm.run("lint", "--strict", str(CHART), "--set", "ingest.replicas=-1")
    assert proc.returncode != 0
    assert "ingest.replicas" in proc.stdout + proc.stderr


def test_schema_rejects_bad_tenant_options(helm, tmp_path):
    """Options that landed with SMTP AUTH, the Message Center and delivery."""
    values = tmp_path / "tenant.yaml"
    values.write_text(yaml.safe_dump({"tenants": [{
        "id": "t", "domains": ["example.com"], "relay_networks": ["192.0.2.0/24"],
        "downstream": [{"host": "mx.example.com", "max_connections": 0}],
        "auth": [{"username": "relay", "password_hash": "plaintext-password"}],
        "frame_ancestors": ["portal.example.com"], "api_keys": ["my-api-key"],
        "default_user": {"levels": {"spam": "extreme"}}, "max_retry_days": 0,
    }]}))
    proc = helm.template("-f", str(values), check=False)
    assert proc.returncode != 0
    for field in ("tenants.0.downstream.0.max_connections", "tenants.0.auth.0.password_hash",
                  "tenants.0.frame_ancestors.0", "tenants.0.api_keys.0", "tenants.0.default_user.levels.spam",
                  "tenants.0.max_retry_days"):
        assert field in proc.stderr, (field, proc.stderr)


def test_tenant_schema_follows_the_tenants_file_model():
    """Every option of postwarden.config.Tenant is in the chart's schema, and nothing else."""
    from postwarden.config import DefaultUser, DigestSchedule, Downstream, SmtpLogin, Tenant

    tenant = json.loads((CHART / "values.schema.json").read_text())["definitions"]["tenant"]["properties"]
    # recipients_file is relative to the tenants file, which the chart renders alone: use recipients.
    assert set(tenant) == set(Tenant.model_fields) - {"recipients_file"}
    assert set(tenant["downstream"]["items"]["properties"]) == set(Downstream.model_fields)
    assert set(tenant["digest"]["properties"]) == set(DigestSchedule.model_fields)
    assert set(tenant["auth"]["items"]["properties"]) == set(SmtpLogin.model_fields)
    assert set(tenant["default_user"]["properties"]) == set(DefaultUser.model_fields)


def test_schema_is_draft07_and_accepts_the_examples():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)
    # Example files are overrides; helm merges them over the defaults.
    for path in filter(None, VALUES_FILES.values()):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
