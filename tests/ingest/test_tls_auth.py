"""STARTTLS with a configured certificate, per-tenant require_tls, SMTP AUTH
(over TLS only, scrypt hashes) as an alternative to relay networks."""

import asyncio
import base64

import pytest

from ingest.passwords import hash_password
from ingest.server import IngestNode
from postwarden.config import ConfigError
from postwarden.records import Envelope
from tests.ingest.certs import make_cert
from tests.ingest.conftest import TENANT, ingest_settings, tenants_yaml
from tests.ingest.smtp_client import RawSMTP
from tests.kafka_reader import read_topic

BODY = b"Subject: hi\r\n\r\nhello\r\n"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def tls_env(tmp_path):
    cert, key = make_cert(tmp_path)
    return {"POSTWARDEN_SMTP_TLS_CERT_FILE": str(cert), "POSTWARDEN_SMTP_TLS_KEY_FILE": str(key)}


async def test_starttls_then_mail_is_recorded_as_tls(make_node, broker, tls_env):
    node = await make_node(**tls_env)
    c = await RawSMTP.connect(node.settings.smtp_port)
    code, text = await c.cmd("EHLO client.test")
    assert "STARTTLS" in text
    await c.starttls()
    code, text = await c.cmd("EHLO client.test")
    assert code == 250 and "STARTTLS" not in text
    code, text = await c.transaction("a@x.example", ["b@example.com"], BODY)
    assert code == 250, text
    recs = await asyncio.to_thread(read_topic, broker.bootstrap, "mail.inbound", lambda r: len(r) >= 1)
    env = Envelope.from_headers(recs[0].headers)
    assert env.tls is True and env.client_ip == "127.0.0.1"
    assert b"with ESMTPS id" in recs[0].value.split(b"\r\n\r\n")[0]


async def test_commands_pipelined_behind_starttls_are_discarded(make_node, tls_env):
    """Plaintext injected after STARTTLS must not run inside the TLS session."""
    node = await make_node(**tls_env)
    c = await RawSMTP.connect(node.settings.smtp_port)
    await c.cmd("EHLO client.test")
    code, text = await c.cmd(b"STARTTLS\r\nMAIL FROM:<injected@x.example>\r\n")
    assert code == 220
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    await c.writer.start_tls(ctx)
    await c.cmd("EHLO client.test")
    code, text = await c.cmd("RCPT TO:<b@example.com>")
    assert code == 503  # no MAIL in this session


async def test_tenant_requiring_tls_refuses_plaintext_recipients(make_node, tmp_path, tls_env):
    path = tenants_yaml(tmp_path, TENANT % ("acme", "acme.example", "127.0.0.0/8", ", require_tls: true"),
                        TENANT % ("open", "open.example", "127.0.0.0/8", ""))
    node = await make_node(POSTWARDEN_TENANTS_FILE=path, **tls_env)
    c = await RawSMTP.connect(node.settings.smtp_port)
    await c.cmd("EHLO client.test")
    await c.cmd("MAIL FROM:<a@x.example>")
    code, text = await c.cmd("RCPT TO:<u@acme.example>")
    assert code == 530 and "STARTTLS" in text
    assert (await c.cmd("RCPT TO:<u@open.example>"))[0] == 250
    await c.cmd("RSET")
    await c.starttls()
    await c.cmd("EHLO client.test")
    assert (await c.transaction("a@x.example", ["u@acme.example"], BODY))[0] == 250


def auth_tenants(tmp_path):
    login = f", auth: [{{username: relay1, password_hash: '{hash_password(PASSWORD)}'}}]"
    return tenants_yaml(tmp_path, TENANT % ("acme", "acme.example", "198.51.100.0/24", login),
                        TENANT % ("other", "other.example", "198.51.100.0/24", ""))


async def test_auth_over_tls_lets_a_provider_relay_from_outside_its_networks(make_node, tmp_path, tls_env):
    node = await make_node(POSTWARDEN_TENANTS_FILE=auth_tenants(tmp_path), **tls_env)
    c = await RawSMTP.connect(node.settings.smtp_port)
    code, text = await c.cmd("EHLO client.test")
    assert "AUTH" not in text  # never offered in clear
    assert (await c.cmd("AUTH PLAIN " + base64.b64encode(b"\0relay1\0" + PASSWORD.encode()).decode()))[0] == 538
    await c.cmd("MAIL FROM:<a@x.example>")
    assert (await c.cmd("RCPT TO:<u@acme.example>"))[0] == 550  # 127.0.0.1 is not a relay network
    await c.cmd("RSET")
    await c.starttls()
    code, text = await c.cmd("EHLO client.test")
    assert "AUTH" in text and "PLAIN" in text
    wrong = base64.b64encode(b"\0relay1\0not the password").decode()
    assert (await c.cmd("AUTH PLAIN " + wrong))[0] == 535
    good = base64.b64encode(b"\0relay1\0" + PASSWORD.encode()).decode()
    assert (await c.cmd("AUTH PLAIN " + good))[0] == 235
    await c.cmd("MAIL FROM:<a@x.example>")
    # The login relays for its own tenant only.
    assert (await c.cmd("RCPT TO:<u@other.example>"))[0] == 550
    assert (await c.cmd("RCPT TO:<u@acme.example>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    c.send(BODY + b".\r\n")
    assert (await c.reply())[0] == 250


async def test_auth_login_mechanism_and_repeated_failures_close(make_node, tmp_path, tls_env):
    node = await make_node(POSTWARDEN_TENANTS_FILE=auth_tenants(tmp_path), **tls_env)
    c = await RawSMTP.connect(node.settings.smtp_port)
    await c.cmd("EHLO client.test")
    await c.starttls()
    await c.cmd("EHLO client.test")
    for attempt in range(3):
        code, _ = await c.cmd("AUTH LOGIN " + base64.b64encode(b"nosuchuser").decode())
        assert code == 334
        code, text = await c.cmd(base64.b64encode(b"guess").decode())
        assert code == 535
    code, text = await c.reply()
    assert code == 421 and "failed authentications" in text


def test_tls_or_auth_tenant_without_certificate_stops_the_node(tmp_path):
    path = tenants_yaml(tmp_path, TENANT % ("acme", "acme.example", "127.0.0.0/8", ", require_tls: true"))
    with pytest.raises(ConfigError, match="require TLS or use SMTP AUTH.*POSTWARDEN_SMTP_TLS_CERT_FILE"):
        IngestNode(ingest_settings("127.0.0.1:1", tmp_path, POSTWARDEN_TENANTS_FILE=path))


def test_unusable_certificate_names_the_files(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot use POSTWARDEN_SMTP_TLS_CERT_FILE=.*bad.pem"):
        IngestNode(ingest_settings("127.0.0.1:1", tmp_path, POSTWARDEN_SMTP_TLS_CERT_FILE=str(bad),
                                   POSTWARDEN_SMTP_TLS_KEY_FILE=str(bad)))
