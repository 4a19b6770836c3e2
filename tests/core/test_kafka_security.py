"""Kafka TLS/SASL settings: validation, and the arguments every kind of client gets.

SASL cannot be tried against a broker here (none speaks it), so these tests
check that aiokafka, kafka-python and Faust are handed the same, complete
settings; TLS is also exercised for real in tests/kafka.
"""

from __future__ import annotations

import ssl

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol, SASLMechanism
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from postwarden.config import ConfigError, Settings, load_settings
from postwarden.kafka_security import client_kwargs, faust_credentials, ssl_context
from tests.kafka_tls import make_ca

SECRET = "s3cret-Pa55word"
BOOT = {"POSTWARDEN_BOOTSTRAP_SERVERS": "kafka-0.test:9093"}


def settings(**env: str) -> Settings:
    return load_settings({**BOOT, **{f"POSTWARDEN_KAFKA_{k.upper()}": v for k, v in env.items()}})


def config_error(**env: str) -> str:
    with pytest.raises(ConfigError) as info:
        settings(**env)
    return str(info.value)


def sasl(protocol: str = "SASL_SSL", mechanism: str = "SCRAM-SHA-512", **more: str) -> dict[str, str]:
    return {"security_protocol": protocol, "sasl_mechanism": mechanism,
            "sasl_username": "postwarden", "sasl_password": SECRET, **more}


@pytest.fixture
def ca_file(tmp_path):
    return str(make_ca(tmp_path)[0])


# --- validation -----------------------------------------------------------

def test_default_is_plaintext_without_credentials():
    s = load_settings({})
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert client_kwargs(s) == {"security_protocol": "PLAINTEXT"}
    assert ssl_context(s) is None and faust_credentials(s) is None


def test_unknown_protocol_and_mechanism_are_rejected_with_the_choices():
    err = config_error(security_protocol="TLS")
    assert "POSTWARDEN_KAFKA_SECURITY_PROTOCOL" in err and "PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL" in err
    err = config_error(**sasl(mechanism="GSSAPI"))
    assert "POSTWARDEN_KAFKA_SASL_MECHANISM" in err and "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512" in err


def test_protocol_and_mechanism_are_case_insensitive():
    s = settings(**sasl(protocol="sasl_ssl", mechanism="scram-sha-256"))
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")


@pytest.mark.parametrize("missing", ["sasl_mechanism", "sasl_username", "sasl_password"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_protocols_need_mechanism_username_and_password(protocol, missing):
    env = sasl(protocol)
    del env[missing]
    err = config_error(**env)
    assert f"POSTWARDEN_KAFKA_{missing.upper()}" in err and "required with" in err and protocol in err
    assert err.count("POSTWARDEN_KAFKA_SASL_") == 1  # only the missing one is named


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
@pytest.mark.parametrize("name", ["sasl_mechanism", "sasl_username", "sasl_password"])
def test_sasl_settings_without_a_sasl_protocol_are_an_error(protocol, name):
    value = {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": SECRET}[name]
    err = config_error(security_protocol=protocol, **{name: value})
    assert f"POSTWARDEN_KAFKA_{name.upper()}" in err and "does not use SASL" in err


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_settings_without_tls_are_an_error_naming_the_variable(protocol, ca_file):
    extra = sasl(protocol) if protocol.startswith("SASL") else {"security_protocol": protocol}
    err = config_error(**extra, ssl_ca_file=ca_file)
    assert "POSTWARDEN_KAFKA_SSL_CA_FILE" in err and f"={protocol} does not use TLS" in err
    err = config_error(**extra, ssl_check_hostname="false")
    assert "POSTWARDEN_KAFKA_SSL_CHECK_HOSTNAME" in err and "does not use TLS" in err


def test_ca_file_must_exist_be_readable_and_hold_a_certificate(tmp_path):
    err = config_error(security_protocol="SSL", ssl_ca_file=str(tmp_path / "nope.pem"))
    assert "POSTWARDEN_KAFKA_SSL_CA_FILE" in err and "cannot read" in err and "No such file" in err
    err = config_error(security_protocol="SSL", ssl_ca_file=str(tmp_path))
    assert "cannot read" in err and "Is a directory" in err
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    err = config_error(security_protocol="SSL", ssl_ca_file=str(junk))
    assert "holds no PEM CA certificate" in err


def test_secure_protocols_need_a_configured_cluster():
    with pytest.raises(ConfigError) as info:
        load_settings({"POSTWARDEN_KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert "POSTWARDEN_BOOTSTRAP_SERVERS" in str(info.value) and "local broker" in str(info.value)


def test_the_sasl_password_is_never_shown():
    s = settings(**sasl())
    assert SECRET not in repr(s) and SECRET not in str(s)
    # Not even when the password itself is what is wrong.
    err = config_error(security_protocol="SSL", sasl_password=SECRET)
    assert "POSTWARDEN_KAFKA_SASL_PASSWORD" in err and SECRET not in err


# --- client arguments -----------------------------------------------------

def test_ssl_verifies_the_broker_against_the_given_ca(ca_file):
    s = settings(security_protocol="SSL", ssl_ca_file=ca_file)
    kwargs = client_kwargs(s)
    assert set(kwargs) == {"security_protocol", "ssl_context"} and kwargs["security_protocol"] == "SSL"
    ctx = kwargs["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [dict(c["subject"][0])["commonName"] for c in ctx.get_ca_certs()] == ["postwarden test ca"]
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials) and creds.protocol is AuthProtocol.SSL
    assert creds.context.get_ca_certs() == ctx.get_ca_certs()


def test_ssl_without_a_ca_file_uses_the_system_cas_and_may_skip_the_name_check():
    s = settings(security_protocol="SSL", ssl_check_hostname="false")
    ctx = ssl_context(s)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and not ctx.check_hostname
    assert not any("postwarden" in str(c["subject"]) for c in ctx.get_ca_certs())


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_reaches_aiokafka_kafka_python_and_faust_alike(protocol, mechanism, ca_file):
    extra = {"ssl_ca_file": ca_file} if protocol == "SASL_SSL" else {}
    s = settings(**sasl(protocol, mechanism), **extra)
    kwargs = client_kwargs(s)
    assert {k: v for k, v in kwargs.items() if k != "ssl_context"} == {
        "security_protocol": protocol, "sasl_mechanism": mechanism,
        "sasl_plain_username": "postwarden", "sasl_plain_password": SECRET}
    assert ("ssl_context" in kwargs) == (protocol == "SASL_SSL")

    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol is AuthProtocol(protocol) and creds.mechanism is SASLMechanism(mechanism)
    assert SECRET not in repr(creds)
    # What Faust hands its aiokafka producer and consumers.
    faust_kwargs = credentials_to_aiokafka_auth(creds)
    assert {k: v for k, v in faust_kwargs.items() if k != "ssl_context"} == {
        k: v for k, v in kwargs.items() if k != "ssl_context"}
    assert (faust_kwargs["ssl_context"] is None) == (protocol == "SASL_PLAINTEXT")


def test_kafka_python_clients_know_every_argument():
    kwargs = client_kwargs(settings(**sasl()))
    for client in (KafkaAdminClient, KafkaConsumer, KafkaProducer):
        assert set(kwargs) <= set(client.DEFAULT_CONFIG), client


async def test_aiokafka_clients_accept_the_arguments(ca_file):
    # aiokafka checks protocol, mechanism and context together when a client is built.
    for env in (sasl(ssl_ca_file=ca_file), sasl("SASL_PLAINTEXT", "PLAIN"),
                {"security_protocol": "SSL", "ssl_ca_file": ca_file}):
        kwargs = client_kwargs(settings(**env))
        for cls in (AIOKafkaProducer, AIOKafkaConsumer):
            client = cls(bootstrap_servers="127.0.0.1:1", **kwargs)
            inner = client.client if cls is AIOKafkaProducer else client._client
            assert inner._security_protocol == kwargs["security_protocol"]
            assert inner._sasl_plain_password == kwargs.get("sasl_plain_password")
            assert inner._ssl_context is kwargs.get("ssl_context")
            await client.stop()
    with pytest.raises(ValueError):  # the reason every TLS client needs our context
        AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", security_protocol="SSL")
