"""Secret keys, held outside the data they protect, with rotation.

A keys file holds one or more master keys, newest first. Every secret the
code uses (quarantine encryption per tenant, link signing per tenant, session
cookies) is derived from a master key with HKDF, labelled by purpose and
tenant, so one tenant's key never opens another's data. Rotation: put a new
master key first; older ones stay to read and verify what they made, and are
removed once nothing needs them.

On one machine, a keys file is generated under the data directory on first use
(mode 0600); in a cluster it comes from a Kubernetes Secret.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from postwarden.config import ConfigError

KEY_BYTES = 32


@dataclass(frozen=True)
class MasterKey:
    id: str
    secret: bytes


class Keyring:
    def __init__(self, keys: list[MasterKey], source: str) -> None:
        if not keys:
            raise ConfigError(f"invalid configuration in {source}: no master keys")
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"invalid configuration in {source}: master key ids repeat")
        self.source = source
        self._keys = {k.id: k for k in keys}
        self.current_id = keys[0].id

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def derive(self, purpose: str, tenant: str, key_id: str | None = None) -> tuple[str, bytes]:
        """(key id, 32-byte key) for purpose and tenant; the current master key by default.

        Raises KeyError for a key id the keyring no longer holds (a retired key).
        """
        kid = key_id or self.current_id
        master = self._keys[kid]
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                    info=f"postwarden/{purpose}/{tenant}".encode())
        return kid, hkdf.derive(master.secret)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        source = str(path)
        try:
            data = json.loads(path.read_text())
            entries = data["master_keys"]
            keys = [MasterKey(str(e["id"]), base64.b64decode(e["key"], validate=True)) for e in entries]
        except OSError as exc:
            raise ConfigError(f"cannot read keys file {source}: {exc.strerror}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"invalid configuration in {source}: expected "
                '{"master_keys": [{"id": ..., "key": base64}, ...]} '
                f"({type(exc).__name__}: {exc})"
            ) from exc
        for k in keys:
            if len(k.secret) < KEY_BYTES:
                raise ConfigError(f"invalid configuration in {source}: master_keys.{k.id}: "
                                  f"key must be at least {KEY_BYTES} bytes")
        return cls(keys, source)

    @classmethod
    def load_or_create(cls, path: Path) -> Keyring:
        if not path.exists():
            write_keys_file(path, [new_master_key("k1")])
        return cls.load(path)


def new_master_key(key_id: str) -> MasterKey:
    return MasterKey(key_id, os.urandom(KEY_BYTES))


def write_keys_file(path: Path, keys: list[MasterKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"master_keys": [{"id": k.id, "key": base64.b64encode(k.secret).decode()} for k in keys]}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)


def rotate(path: Path) -> str:
    """Put a fresh master key first in the keys file; returns its id."""
    ring = Keyring.load(path)
    existing = [MasterKey(i, ring._keys[i].secret) for i in ring.key_ids]
    n = 1 + max((int(i[1:]) for i in ring.key_ids if i[1:].isdigit() and i.startswith("k")), default=0)
    new = new_master_key(f"k{n}")
    write_keys_file(path, [new, *existing])
    return new.id
