"""TLS and SASL of the Kafka clients, built from Settings in this one place.

Every client the code creates (aiokafka, kafka-python, Faust) gets its
security from here, so a cluster that requires TLS or SASL is reached by all
of them or the process fails at start; none silently falls back to plaintext.
aiokafka and kafka-python take the same keyword arguments.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from postwarden.config import Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The verifying client context, or None when the protocol has no TLS."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ca = settings.kafka_ssl_ca_file
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer/Consumer and kafka-python clients."""
    kwargs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                      sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password)
    return kwargs


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials``; None for PLAINTEXT."""
    import faust

    context = ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        return faust.SASLCredentials(username=settings.kafka_sasl_username,
                                     password=settings.kafka_sasl_password,
                                     ssl_context=context, mechanism=settings.kafka_sasl_mechanism)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def tls_failure(bootstrap: list[str], security: Mapping[str, Any], timeout: float = 3.0) -> str | None:
    """Why the TLS handshake with the bootstrap servers fails, or None if it works or is not used.

    The Kafka clients only report "unable to bootstrap" when the handshake fails;
    this says why (an untrusted certificate, a name mismatch, a plaintext port).
    """
    context = security.get("ssl_context")
    if context is None:
        return None
    reason = None
    for server in bootstrap:
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        try:
            with socket.create_connection((host, int(port)), timeout) as sock, \
                    context.wrap_socket(sock, server_hostname=host):
                return None
        except ssl.SSLError as exc:
            reason = f"TLS handshake failed: {exc}"
        except OSError:  # not reachable at all: not a TLS problem
            continue
    return reason
