"""The server-side TLS context for STARTTLS."""

from __future__ import annotations

import ssl

from postwarden.config import ConfigError, Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """None when no certificate is configured; ConfigError naming the file if unusable."""
    if settings.smtp_tls_cert_file is None or settings.smtp_tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Sending MTAs rarely have client certificates; relay permission comes from
    # relay_networks or AUTH, not from TLS client authentication.
    context.verify_mode = ssl.CERT_NONE
    try:
        context.load_cert_chain(settings.smtp_tls_cert_file, settings.smtp_tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use POSTWARDEN_SMTP_TLS_CERT_FILE={settings.smtp_tls_cert_file} with "
            f"POSTWARDEN_SMTP_TLS_KEY_FILE={settings.smtp_tls_key_file}: {exc}") from exc
    return context
