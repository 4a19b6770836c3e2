"""All configuration in one place.

Process settings come from environment variables prefixed ``POSTWARDEN_``;
everything about provider tenants comes from one YAML file named by
``POSTWARDEN_TENANTS_FILE``. Invalid configuration raises ConfigError naming
the file (or variable) and the field, so a process fails at start instead of
half-working.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from postwarden.keyring import Keyring

ENV_PREFIX = "POSTWARDEN_"
EXAMPLE_TENANTS = "examples/tenants.yaml"


class ConfigError(Exception):
    """Configuration that cannot work; the message names the source and field."""


def _describe(exc: ValidationError, source: str, env_style: bool = False) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if env_style:
            loc = ENV_PREFIX + loc.upper()
        msg = err["msg"]
        if "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


# --- tenants file ---------------------------------------------------------

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_SCHEDULE_RE = re.compile(r"^(\d+)([hd])$")


class Downstream(BaseModel):
    """One of the provider's mailbox servers that clean mail is relayed to."""

    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1)
    port: int = Field(default=25, ge=1, le=65535)
    priority: int = Field(default=10, ge=0, le=65535)
    tls: str = Field(default="opportunistic", pattern="^(none|opportunistic|required)$")
    # Simultaneous SMTP connections the delivery sink opens to this server (per sink process).
    max_connections: int = Field(default=10, ge=1, le=500)


class DigestSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every: str = "1d"
    links: bool = True

    @field_validator("every")
    @classmethod
    def _every(cls, v: str) -> str:
        m = _SCHEDULE_RE.match(v.strip())
        if not m:
            raise ValueError("must be a number of hours or days such as '12h' or '3d'")
        n, unit = int(m.group(1)), m.group(2)
        hours = n * (24 if unit == "d" else 1)
        if not 1 <= hours <= 240:
            raise ValueError("must be between 1h and 10d")
        return v.strip()

    @property
    def interval_seconds(self) -> int:
        m = _SCHEDULE_RE.match(self.every)
        assert m
        return int(m.group(1)) * (86400 if m.group(2) == "d" else 3600)


class Tenant(BaseModel):
    """A provider whose users' mail we filter."""

    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    name: str = ""
    domains: list[str] = Field(min_length=1)
    relay_networks: list[str] = Field(min_length=1)
    downstream: list[Downstream] = Field(min_length=1)
    quarantine_retention_days: int = Field(default=14, ge=1, le=365)
    digest: DigestSchedule = Field(default_factory=DigestSchedule)
    spam_threshold: float = Field(default=50.0, ge=0, le=100)
    # How long delivery keeps retrying temporary failures before bouncing (fractions allowed).
    max_retry_days: float = Field(default=5.0, gt=0, le=30)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        out = []
        for d in v:
            d = d.strip().lower().rstrip(".")
            if not _DOMAIN_RE.match(d):
                raise ValueError(f"{d!r} is not a domain name")
            out.append(d)
        return out

    @field_validator("relay_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"{n!r} is not an IP network (use CIDR such as 192.0.2.0/24)") from None
        return v

    @cached_property
    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.relay_networks]

    def allows_relay_from(self, client_ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenants: list[Tenant] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> TenantsFile:
        seen_ids: set[str] = set()
        seen_domains: dict[str, str] = {}
        for t in self.tenants:
            if t.id in seen_ids:
                raise ValueError(f"tenant id {t.id!r} appears twice")
            seen_ids.add(t.id)
            for d in t.domains:
                if d in seen_domains:
                    raise ValueError(
                        f"domain {d!r} belongs to both {seen_domains[d]!r} and {t.id!r}"
                    )
                seen_domains[d] = t.id
        return self


class Tenants:
    """Lookup of tenants by id and by recipient domain."""

    def __init__(self, parsed: TenantsFile, source: str) -> None:
        self.source = source
        self.all = parsed.tenants
        self._by_id = {t.id: t for t in parsed.tenants}
        self._by_domain = {d: t for t in parsed.tenants for d in t.domains}

    def get(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def for_address(self, address: str) -> Tenant | None:
        _, _, domain = address.rpartition("@")
        return self._by_domain.get(domain.lower().rstrip("."))


def load_tenants(path: str | Path | None) -> Tenants:
    if path is None:
        ref = resources.files("postwarden").joinpath(EXAMPLE_TENANTS)
        text, source = ref.read_text(), f"{ref} (shipped example)"
    else:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read tenants file {source}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid configuration in {source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: expected a mapping with a 'tenants' list")
    try:
        parsed = TenantsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
    return Tenants(parsed, source)


# --- process settings -----------------------------------------------------


class Settings(BaseSettings):
    """Process settings; each field is the environment variable POSTWARDEN_<NAME>."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Kafka-protocol cluster; empty means "start a local Tansu broker" in `postwarden up`.
    bootstrap_servers: str = ""
    topic_partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)
    # Bounded wait for the broker's acknowledgement before answering 451.
    produce_timeout: float = Field(default=10.0, gt=0, le=300)

    tenants_file: Path | None = None
    data_dir: Path = Path("var")
    # Master keys (JSON, see postwarden.keyring); default: generated under data_dir.
    keys_file: Path | None = None

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=2525, ge=1, le=65535)
    smtp_hostname: str = "postwarden.localhost"
    max_message_size: int = Field(default=10 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024)
    node_name: str = Field(default_factory=lambda: os.uname().nodename)

    # Empty: embedded chdb under data_dir/clickhouse. Otherwise a clickhouse-driver URL,
    # e.g. clickhouse://user:password@host:9000/postwarden
    clickhouse_url: str = ""
    # Kept out of the URL so it can come from a Kubernetes Secret.
    clickhouse_password: str = Field(default="", repr=False)
    stats_flush_seconds: float = Field(default=2.0, gt=0, le=300)

    # /healthz, /readyz and /metrics of this process (0 disables). `postwarden up`
    # gives its children consecutive ports from here.
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=8080, ge=0, le=65535)
    # Port of the broker `postwarden up` starts when no cluster is configured.
    local_broker_port: int = Field(default=19092, ge=1, le=65535)

    # Message Center and provider API (`postwarden web`), and the address users reach
    # it at: links in digests and alerts are built on public_url.
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8000, ge=1, le=65535)
    public_url: str = "http://127.0.0.1:8000"

    # Outbound delivery: seconds to wait before each retry tier (mail.deliver.retry.1..4,
    # non-decreasing); per-command SMTP timeout; how often finished offsets are committed.
    delivery_retry_delays: str = "60,600,3600,14400"
    delivery_timeout: float = Field(default=60.0, gt=0, le=600)
    delivery_commit_seconds: float = Field(default=1.0, gt=0, le=300)
    # Sender of virus alerts and digests; DSNs come from MAILER-DAEMON at smtp_hostname.
    notify_from: str = "postmaster@postwarden.localhost"
    # How often the notifier looks for digests that are due.
    notify_tick_seconds: float = Field(default=30.0, gt=0, le=3600)

    app_id: str = Field(default="postwarden", pattern=r"^[A-Za-z0-9._-]+$")
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        v = v.strip()
        for server in filter(None, (s.strip() for s in v.split(","))):
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return v

    @field_validator("clickhouse_url")
    @classmethod
    def _ch_url(cls, v: str) -> str:
        if v and not v.startswith(("clickhouse://", "clickhouses://")):
            raise ValueError("must start with clickhouse:// or clickhouses://")
        return v

    @field_validator("delivery_retry_delays")
    @classmethod
    def _retry_delays(cls, v: str) -> str:
        from postwarden.topics import DELIVER_RETRY_TIERS

        try:
            delays = [float(x) for x in v.split(",")]
        except ValueError:
            raise ValueError("must be comma-separated seconds such as '60,600,3600,14400'") from None
        if len(delays) != len(DELIVER_RETRY_TIERS):
            raise ValueError(f"must list {len(DELIVER_RETRY_TIERS)} delays, one per retry topic")
        if any(d <= 0 for d in delays) or delays != sorted(delays):
            raise ValueError("delays must be positive and non-decreasing")
        return v

    @field_validator("notify_from")
    @classmethod
    def _notify_from(cls, v: str) -> str:
        local, at, domain = v.strip().rpartition("@")
        if not at or not local or not domain or any(c.isspace() or c in "<>" for c in v.strip()):
            raise ValueError("must be an address such as postmaster@gateway.example")
        return v.strip()

    @property
    def retry_delays(self) -> list[float]:
        return [float(x) for x in self.delivery_retry_delays.split(",")]

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def tenants(self) -> Tenants:
        return load_tenants(self.tenants_file)

    def keyring(self) -> Keyring:
        from postwarden.keyring import Keyring

        if self.keys_file is not None:
            return Keyring.load(self.keys_file)
        return Keyring.load_or_create(self.data_dir / "keys.json")


def load_settings(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``env`` (default os.environ), raising ConfigError on bad values."""
    try:
        if env is None:
            return Settings(**overrides)
        values = {
            k[len(ENV_PREFIX):].lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)
        }
        values.update(overrides)
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "the environment", env_style=True)) from exc
