"""Kafka TLS/SASL values: every pod with a Kafka client gets them, web none, and the app accepts them."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from postwarden.config import load_settings
from postwarden.kafka_security import client_kwargs
from tests.deploy.test_helm_chart import (
    K8S_VERSIONS, OPERATOR_KINDS, component, container_env, mounts, postwarden_containers, unknown_settings,
    volume,
)
from tests.kafka_tls import make_ca

# Containers that create Kafka clients (the migration hook's are topics + clickhouse migrate:
# both load the same settings, so both get them).
KAFKA_USERS = {"ingest", "worker", "stats", "delivery", "notifier", "migrate"}
CA_DIR = "/etc/postwarden/kafka-tls"
SECURE = {"kafka": {"tls": {"enabled": True, "caSecret": "kafka-ca", "caKey": "bundle.pem"},
                    "sasl": {"enabled": True, "mechanism": "SCRAM-SHA-256", "username": "postwarden",
                             "passwordSecret": {"name": "kafka-postwarden", "key": "pw"}},
                    "networkPolicy": {"ports": [9093]}}}


def render(helm, tmp_path, values: dict) -> list[dict]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return helm.render(values=path)


def kafka_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith("POSTWARDEN_KAFKA_")}


def test_default_is_plaintext_in_every_kafka_pod_and_nothing_in_web(rendered):
    for docs in rendered.values():
        seen = set()
        for w, c in postwarden_containers(docs):
            env = kafka_env(container_env(docs, c))
            if component(w) == "web":
                assert env == {}
                continue
            seen.add(component(w))
            assert env == {"POSTWARDEN_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, component(w)
            assert CA_DIR not in mounts(c)
        assert seen == KAFKA_USERS


def test_tls_and_sasl_reach_every_kafka_pod_and_the_app_accepts_them(helm, tmp_path):
    docs = render(helm, tmp_path, SECURE)
    ca_file = make_ca(tmp_path)[0]
    seen = set()
    for w, c in postwarden_containers(docs):
        where = f"{component(w)}/{c['name']}"
        env = container_env(docs, c, expand=True)
        if component(w) == "web":
            assert kafka_env(env) == {} and CA_DIR not in mounts(c), where
            assert "kafka-tls" not in {v["name"] for v in w["spec"]["template"]["spec"]["volumes"]}
            continue
        seen.add(component(w))
        assert not unknown_settings(env), where
        assert kafka_env(env) == {
            "POSTWARDEN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "POSTWARDEN_KAFKA_SSL_CHECK_HOSTNAME": "true",
            "POSTWARDEN_KAFKA_SSL_CA_FILE": f"{CA_DIR}/ca.crt",
            "POSTWARDEN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "POSTWARDEN_KAFKA_SASL_USERNAME": "postwarden",
            "POSTWARDEN_KAFKA_SASL_PASSWORD": {"secretKeyRef": {"name": "kafka-postwarden", "key": "pw"}},
        }, where
        mount = mounts(c)[CA_DIR]
        assert mount["readOnly"] is True and "subPath" not in mount, where
        assert volume(w, mount["name"])["secret"]["secretName"] == "kafka-ca"
        assert volume(w, mount["name"])["secret"]["items"] == [{"key": "bundle.pem", "path": "ca.crt"}]
        # What the process would load, with the Secret's contents standing in.
        literal = {k: v for k, v in env.items() if isinstance(v, str)}
        literal.update(POSTWARDEN_KAFKA_SASL_PASSWORD="from-the-secret",
                       POSTWARDEN_KAFKA_SSL_CA_FILE=str(ca_file))
        kwargs = client_kwargs(load_settings(env=literal))
        assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_plain_username"] == "postwarden"
    assert seen == KAFKA_USERS
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert doc["kind"] in OPERATOR_KINDS
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.caught.message}")
    assert not errors, errors


@pytest.mark.parametrize(("values", "protocol", "ca"), [
    ({"tls": {"enabled": True}}, "SSL", False),
    ({"tls": {"enabled": True, "caSecret": "kafka-ca", "checkHostname": False}}, "SSL", True),
    ({"sasl": {"enabled": True, "username": "pw", "passwordSecret": {"name": "s"}}}, "SASL_PLAINTEXT", False),
])
def test_each_combination_gives_its_protocol(helm, tmp_path, values, protocol, ca):
    docs = render(helm, tmp_path, {"kafka": values})
    for w, c in postwarden_containers(docs):
        if component(w) == "web":
            continue
        env = container_env(docs, c)
        assert env["POSTWARDEN_KAFKA_SECURITY_PROTOCOL"] == protocol
        assert ("POSTWARDEN_KAFKA_SSL_CA_FILE" in env) is ca and (CA_DIR in mounts(c)) is ca
        if not values.get("tls", {}).get("checkHostname", True):
            assert env["POSTWARDEN_KAFKA_SSL_CHECK_HOSTNAME"] == "false"


CROSS_CHECKS = {
    "ca without tls": ({"tls": {"caSecret": "kafka-ca"}}, "kafka.tls.caSecret is set but kafka.tls.enabled is false"),
    "hostname check without tls": ({"tls": {"checkHostname": False}}, "kafka.tls.checkHostname is false"),
    "sasl without username": ({"sasl": {"enabled": True, "passwordSecret": {"name": "s"}}},
                              "kafka.sasl.enabled needs kafka.sasl.username and kafka.sasl.passwordSecret.name"),
    "sasl without password": ({"sasl": {"enabled": True, "username": "pw"}},
                              "kafka.sasl.enabled needs kafka.sasl.username and kafka.sasl.passwordSecret.name"),
    "plain in clear text": ({"sasl": {"enabled": True, "mechanism": "PLAIN", "username": "pw",
                                      "passwordSecret": {"name": "s"}}}, "sends the password in clear text"),
}


@pytest.mark.parametrize("case", list(CROSS_CHECKS))
def test_inconsistent_kafka_security_values_fail_clearly(helm, tmp_path, case):
    values, message = CROSS_CHECKS[case]
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"kafka": values}))
    proc = helm.template(values=path, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
