"""Real SMTP servers on loopback for delivery tests: accept, defer, reject, hang, STARTTLS."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postwarden.local_services import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool


@dataclass
class Behaviour:
    """What the server answers; tests flip these while it runs."""

    rcpt_reply: str | None = None  # e.g. "451 4.3.0 try later"; None accepts
    reject_local_prefix: str | None = None  # 550 for recipients whose local part starts so
    data_delay: float = 0.0


class Recorder:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.received: list[Received] = []
        self.sessions = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if not getattr(session, "counted", False):
            session.counted = True
            with self._lock:
                self.sessions += 1
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        b = self.behaviour
        if b.rcpt_reply:
            return b.rcpt_reply
        if b.reject_local_prefix and address.startswith(b.reject_local_prefix):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        import asyncio

        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.behaviour.data_delay:
                await asyncio.sleep(self.behaviour.data_delay)
            with self._lock:
                self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                              envelope.original_content or envelope.content,
                                              session.ssl is not None))
        finally:
            with self._lock:
                self.active -= 1
        return "250 2.0.0 queued"

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.received) < n:
            time.sleep(0.05)
        return list(self.received)


@dataclass
class SmtpServer:
    port: int
    recorder: Recorder
    controller: Controller
    behaviour: Behaviour = field(default_factory=Behaviour)

    def stop(self) -> None:
        self.controller.stop()


def start_server(behaviour: Behaviour | None = None, tls_context: ssl.SSLContext | None = None,
                 port: int | None = None) -> SmtpServer:
    behaviour = behaviour or Behaviour()
    recorder = Recorder(behaviour)
    port = port or free_port()
    kwargs = {}
    if tls_context is not None:
        kwargs = {"tls_context": tls_context, "require_starttls": True}
    controller = Controller(recorder, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return SmtpServer(port, recorder, controller, behaviour)


class HangingServer:
    """Accepts TCP connections (the kernel does) and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def stop(self) -> None:
        self.sock.close()


def self_signed_context(directory: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


def tenants_yaml(path: Path, downstream: list[dict], **options) -> Path:
    """A tenants file with one tenant 'acme' for acme.test whose mail goes to downstream."""
    import yaml

    tenant = {"id": "acme", "domains": ["acme.test"], "relay_networks": ["127.0.0.0/8"],
              "downstream": downstream, **options}
    path.write_text(yaml.safe_dump({"tenants": [tenant]}))
    return path
