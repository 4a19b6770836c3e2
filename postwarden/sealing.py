"""Authenticated encryption of quarantined mail at rest (AES-256-GCM).

Keys are per tenant, derived from the master keyring (postwarden.keyring), so
they are held outside the data; each sealed value names the master key id it
was made with, which keeps older values readable after a rotation. The
associated data binds tenant, recipient, message id and the part (index entry
or message body): a ciphertext copied to another user, message or part fails
to open, and that is reported as tampering.
"""

from __future__ import annotations

import os

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from postwarden.keyring import Keyring

PURPOSE = "quarantine"
_NONCE_BYTES = 12


class TamperedError(Exception):
    """A sealed value failed authentication: altered, moved, or sealed for someone else."""


class RetiredKeyError(Exception):
    """The value was sealed with a master key the keyring no longer holds."""


def _associated(tenant: str, recipient: str, message_id: str, part: str) -> bytes:
    return msgpack.packb(["pw-quarantine/1", tenant, recipient, message_id, part])


class Sealer:
    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._ciphers: dict[tuple[str, str], AESGCM] = {}

    def _cipher(self, tenant: str, key_id: str | None) -> tuple[str, AESGCM]:
        kid = key_id or self._keyring.current_id
        cipher = self._ciphers.get((tenant, kid))
        if cipher is None:
            try:
                _, key = self._keyring.derive(PURPOSE, tenant, kid)
            except KeyError:
                raise RetiredKeyError(f"master key {kid!r} is no longer in the keyring") from None
            cipher = self._ciphers[(tenant, kid)] = AESGCM(key)
        return kid, cipher

    def seal(self, tenant: str, recipient: str, message_id: str, part: str, plaintext: bytes) -> dict:
        kid, cipher = self._cipher(tenant, None)
        nonce = os.urandom(_NONCE_BYTES)
        return {"k": kid, "n": nonce,
                "c": cipher.encrypt(nonce, plaintext, _associated(tenant, recipient, message_id, part))}

    def open(self, tenant: str, recipient: str, message_id: str, part: str, sealed: dict) -> bytes:
        try:
            kid, nonce, ciphertext = sealed["k"], sealed["n"], sealed["c"]
        except (KeyError, TypeError):
            raise TamperedError("sealed value is malformed") from None
        _, cipher = self._cipher(tenant, kid)
        try:
            return cipher.decrypt(nonce, ciphertext, _associated(tenant, recipient, message_id, part))
        except (InvalidTag, ValueError):
            raise TamperedError("sealed value failed authentication") from None
