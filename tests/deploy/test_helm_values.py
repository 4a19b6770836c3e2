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
    "sasl mechanism": (["--set", "kafka.sasl.mechanism=GSSAPI"], "kafka.sasl.mechanism"),
    "password in clickhouse url": (["--set", "clickhouse.url=clickhouse://u:secret@ch:9000/db"], "clickhouse.url"),
    "short quarantine key": (["--set", "secrets.quarantineKey=abc"], "secrets.quarantineKey: Does not match pattern"),
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


def test_sasl_needs_a_password(helm):
    proc = helm.template("--set", "kafka.sasl.enabled=true", check=False)
    assert proc.returncode != 0
    assert "kafka.sasl.password or kafka.sasl.passwordSecret.name" in proc.stderr


def test_schema_is_draft07_and_accepts_the_examples():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)
    # Example files are overrides; helm merges them over the defaults.
    for path in filter(None, VALUES_FILES.values()):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
