"""A Kafka-protocol broker reachable only over TLS, for the client security tests.

Tansu listens in plaintext on a private port and advertises the port of a
TLS terminator in front of it, so every client connection (bootstrap and the
broker addresses from metadata) goes through TLS with a certificate made
here by a throwaway CA.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postwarden.local_services import Tansu, free_port


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"postwarden test {name}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.pem"
    path.write_bytes(_pem(cert))
    return path, cert, key


def server_context(directory: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                   san_ip: str = "127.0.0.1") -> ssl.SSLContext:
    """A server context whose certificate the CA signed for ``san_ip`` only."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "broker.pem", directory / "broker.key"
    cert_path.write_bytes(_pem(cert))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


class TlsProxy:
    """Terminates TLS on ``port`` and pipes each connection to the plaintext target port."""

    def __init__(self, target_port: int, context: ssl.SSLContext, port: int | None = None) -> None:
        self.target_port, self.context = target_port, context
        self.port = port or free_port()
        self.handshakes = 0  # completed TLS handshakes: proof that clients really used TLS
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TlsProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self._handle, "127.0.0.1", self.port, ssl=self.context), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@dataclass
class _AdvertisingTansu(Tansu):
    advertised_port: int = 0

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--advertised-listener-url") + 1] = f"tcp://127.0.0.1:{self.advertised_port}"
        return cmd


@dataclass
class TlsBroker:
    """Tansu behind the TLS proxy; ``bootstrap`` is the TLS address, ``ca_file`` the CA to trust."""

    directory: Path
    ca_file: Path = field(init=False)
    proxy: TlsProxy = field(init=False)
    tansu: Tansu = field(init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def env(self, ca_file: Path | None = None) -> dict[str, str]:
        """The POSTWARDEN_* settings of a client of this broker."""
        return {"POSTWARDEN_BOOTSTRAP_SERVERS": self.bootstrap,
                "POSTWARDEN_KAFKA_SECURITY_PROTOCOL": "SSL",
                "POSTWARDEN_KAFKA_SSL_CA_FILE": str(ca_file or self.ca_file)}

    def start(self) -> TlsBroker:
        self.ca_file, ca, ca_key = make_ca(self.directory)
        tls_port = free_port()
        self.tansu = _AdvertisingTansu(log_path=self.directory / "tansu.log", advertised_port=tls_port)
        self.tansu.start()
        self.proxy = TlsProxy(self.tansu.port, server_context(self.directory, ca, ca_key), tls_port).start()
        return self

    def stop(self) -> None:
        self.proxy.stop()
        self.tansu.stop()
