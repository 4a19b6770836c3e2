"""Users of the Message Center and their filtering settings.

A user's record holds only what they changed: every field left unset
(None, or a category absent from ``levels``) follows the tenant's Default
User, so a change to the tenant defaults reaches every user who did not
choose otherwise. Records live in a Faust table keyed by recipient address
(co-partitioned with mail.verdicts); changes travel as UserCommand records on
mail.user-settings and are applied in order by the owning worker.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from postwarden.config import AGGRESSIVENESS_LEVELS, Tenant
from postwarden.records import _Record

MAX_LIST_ENTRIES = 1000
_ADDRESS_RE = re.compile(r"^[^@\s<>/?#%\\\"]{1,64}@([a-z0-9-]{1,63}\.)+[a-z]{2,63}$")
_DOMAIN_RE = re.compile(r"^([a-z0-9-]{1,63}\.)+[a-z]{2,63}$")
_CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

USER_OPS = ("upsert", "remove", "allow_sender", "end_sessions")


class SettingsError(ValueError):
    """A settings change that cannot be applied; the message says which field and why."""


def normalize_address(address: str) -> str:
    """Lowercased address; raises SettingsError if it is not one."""
    a = address.strip().lower()
    if not _ADDRESS_RE.match(a):
        raise SettingsError(f"{address!r} is not an email address")
    return a


def normalize_sender_entry(entry: str) -> str:
    """An allow/block list entry: a full address or a domain (``example.org`` or ``@example.org``)."""
    e = entry.strip().lower().removeprefix("@")
    if "@" in e:
        return normalize_address(e)
    if not _DOMAIN_RE.match(e):
        raise SettingsError(f"{entry!r} is neither an email address nor a domain")
    return e


@dataclass(frozen=True, slots=True)
class UserRecord(_Record):
    """One user's own settings and credentials (table value, key: address)."""

    address: str
    tenant: str
    filtering: bool | None = None
    levels: dict[str, str] = field(default_factory=dict)
    allow: list[str] = field(default_factory=list)
    block: list[str] = field(default_factory=list)
    password_hash: str | None = None
    # Bumped to end every session of the user (logout everywhere, password change).
    session_version: int = 0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class UserCommand(_Record):
    """A change to one user (mail.user-settings, key: address)."""

    command_id: str
    tenant: str
    address: str
    op: str  # one of USER_OPS
    # For "upsert": a settings patch (see validate_patch); for "allow_sender": {"sender": ...}.
    settings: dict[str, Any] = field(default_factory=dict)
    # Already hashed: plaintext passwords never cross a topic.
    password_hash: str | None = None
    issued_at: float = field(default_factory=time.time)


def new_command(tenant: str, address: str, op: str, settings: dict[str, Any] | None = None,
                password_hash: str | None = None) -> UserCommand:
    if op not in USER_OPS:
        raise SettingsError(f"unknown operation {op!r}")
    return UserCommand(uuid.uuid4().hex, tenant, address, op, settings or {}, password_hash)


def validate_patch(patch: dict[str, Any]) -> dict[str, Any]:
    """Checked, normalized settings patch. Keys: filtering, levels, allow, block.

    ``filtering: null`` and a level of ``"default"`` return that field to the tenant default.
    """
    if not isinstance(patch, dict):
        raise SettingsError("settings must be an object")
    unknown = set(patch) - {"filtering", "levels", "allow", "block"}
    if unknown:
        raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    if "filtering" in patch:
        if patch["filtering"] is not None and not isinstance(patch["filtering"], bool):
            raise SettingsError("filtering must be true, false or null (tenant default)")
        out["filtering"] = patch["filtering"]
    if "levels" in patch:
        levels = patch["levels"]
        if not isinstance(levels, dict):
            raise SettingsError("levels must map a category to a level")
        out["levels"] = {}
        for category, level in levels.items():
            if not isinstance(category, str) or not _CATEGORY_RE.match(category):
                raise SettingsError(f"{category!r} is not a category name")
            if level != "default" and level not in AGGRESSIVENESS_LEVELS:
                raise SettingsError(f"levels.{category}: {level!r} is not one of "
                                    f"default, {', '.join(AGGRESSIVENESS_LEVELS)}")
            out["levels"][category] = level
    for name in ("allow", "block"):
        if name in patch:
            entries = patch[name]
            if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                raise SettingsError(f"{name} must be a list of addresses or domains")
            if len(entries) > MAX_LIST_ENTRIES:
                raise SettingsError(f"{name} holds at most {MAX_LIST_ENTRIES} entries")
            out[name] = sorted({normalize_sender_entry(e) for e in entries if e.strip()})
    return out


def apply_patch(record: UserRecord, patch: dict[str, Any], now: float) -> UserRecord:
    changes: dict[str, Any] = {"updated_at": now}
    if "filtering" in patch:
        changes["filtering"] = patch["filtering"]
    if "levels" in patch:
        levels = dict(record.levels)
        for category, level in patch["levels"].items():
            if level == "default":
                levels.pop(category, None)
            else:
                levels[category] = level
        changes["levels"] = levels
    for name in ("allow", "block"):
        if name in patch:
            changes[name] = list(patch[name])
    return replace(record, **changes)


@dataclass(frozen=True)
class EffectiveSettings:
    """What the policy applies: the user's choices over the tenant defaults."""

    filtering: bool
    levels: dict[str, str]
    allow: tuple[str, ...]
    block: tuple[str, ...]

    def level_for(self, category: str) -> str:
        return self.levels.get(category, "moderate")


def effective(record: UserRecord | None, tenant: Tenant) -> EffectiveSettings:
    defaults = tenant.default_user
    if record is None:
        return EffectiveSettings(defaults.filtering, dict(defaults.levels), (), ())
    return EffectiveSettings(
        filtering=defaults.filtering if record.filtering is None else record.filtering,
        levels={**defaults.levels, **record.levels},
        allow=tuple(record.allow), block=tuple(record.block),
    )


def apply_command(record: UserRecord | None, cmd: UserCommand, now: float) -> UserRecord | None:
    """The user's record after cmd (None: removed). Raises SettingsError on a bad command."""
    if cmd.op == "remove":
        return None
    base = record or UserRecord(address=cmd.address, tenant=cmd.tenant, updated_at=now)
    if cmd.op == "upsert":
        updated = apply_patch(base, validate_patch(cmd.settings), now)
        if cmd.password_hash is not None:
            # A new password ends every existing session.
            updated = replace(updated, password_hash=cmd.password_hash,
                              session_version=updated.session_version + 1)
        return updated
    if cmd.op == "allow_sender":
        sender = normalize_sender_entry(str(cmd.settings.get("sender", "")))
        if len(base.allow) >= MAX_LIST_ENTRIES and sender not in base.allow:
            raise SettingsError(f"allow holds at most {MAX_LIST_ENTRIES} entries")
        return replace(base, allow=sorted({*base.allow, sender}),
                       block=[b for b in base.block if b != sender], updated_at=now)
    if cmd.op == "end_sessions":
        return replace(base, session_version=base.session_version + 1, updated_at=now)
    raise SettingsError(f"unknown operation {cmd.op!r}")
