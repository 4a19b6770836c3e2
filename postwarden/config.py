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
    PrivateAttr,
    ValidationError,
    ValidationInfo,
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
        if ("input" in err and err["type"] != "missing" and not isinstance(err["input"], dict)
                and not _is_secret(err["loc"])):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _is_secret(loc: tuple) -> bool:
    """A field declared repr=False: its value never goes into an error message."""
    name = str(loc[-1]) if loc else ""
    return any(name in m.model_fields and not m.model_fields[name].repr for m in (Settings, SmtpLogin))


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


_ADDRESS_RE = re.compile(r"^[^@\s]{1,64}@[a-z0-9.-]{1,253}$")
# scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>, as made by `postwarden smtp-password-hash`.
_PASSWORD_HASH_RE = re.compile(r"^scrypt\$\d{1,2}\$\d{1,2}\$\d{1,2}\$[A-Za-z0-9+/=]{16,}\$[A-Za-z0-9+/=]{32,}$")


class SmtpLogin(BaseModel):
    """An SMTP AUTH login of a provider's MTA; only a slow salted hash is stored."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=255, pattern=r"^[^\s:]+$")
    password_hash: str = Field(repr=False)

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, v: str) -> str:
        if not _PASSWORD_HASH_RE.match(v):
            raise ValueError("must be a hash made by `postwarden smtp-password-hash`, never a password")
        return v


# Aggressiveness per category, from "never quarantine" to strictest; the threshold of
# each level is derived from the tenant's spam_threshold (see streams.policy).
AGGRESSIVENESS_LEVELS = ("off", "lenient", "moderate", "aggressive", "most_aggressive")
_API_KEY_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$")


class DefaultUser(BaseModel):
    """Postini's "Default User": the settings every user of a tenant starts from."""

    model_config = ConfigDict(extra="forbid")
    filtering: bool = True
    levels: dict[str, str] = Field(default_factory=lambda: {
        "spam": "moderate", "bulk": "moderate", "adult": "moderate", "phishing": "aggressive"})

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: dict[str, str]) -> dict[str, str]:
        for category, level in v.items():
            if level not in AGGRESSIVENESS_LEVELS:
                raise ValueError(f"{category}: {level!r} is not one of {', '.join(AGGRESSIVENESS_LEVELS)}")
        return v


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
    default_user: DefaultUser = Field(default_factory=DefaultUser)
    # Origins of the provider's portal allowed to frame the Message Center (CSP frame-ancestors).
    frame_ancestors: list[str] = Field(default_factory=list)
    # Provider API keys, stored as "sha256:<hex>" of the key (`postwarden api-key new`).
    api_keys: list[str] = Field(default_factory=list)

    @field_validator("frame_ancestors")
    @classmethod
    def _frame_ancestors(cls, v: list[str]) -> list[str]:
        for origin in v:
            if not _ORIGIN_RE.match(origin):
                raise ValueError(f"{origin!r} is not an origin such as https://portal.example.com")
        return v

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, v: list[str]) -> list[str]:
        for h in v:
            if not _API_KEY_HASH_RE.match(h):
                raise ValueError("API keys are stored hashed: 'sha256:' and 64 hex digits "
                                 "(see `postwarden api-key new`)")
        return v
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

    # --- SMTP ingest options (issue 3) ---
    # Known recipient addresses; when set (inline or as a file of one address a
    # line, relative to the tenants file) other local parts get 550.
    recipients: list[str] | None = None
    recipients_file: str | None = None
    # Refuse RCPT for this tenant over a connection without STARTTLS.
    require_tls: bool = False
    # SMTP AUTH logins allowed to relay for this tenant besides relay_networks.
    auth: list[SmtpLogin] = Field(default_factory=list)
    _recipient_set: frozenset[str] | None = PrivateAttr(default=None)

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        out = []
        for r in v:
            r = r.strip().lower()
            if not _ADDRESS_RE.match(r):
                raise ValueError(f"{r!r} is not an email address")
            out.append(r)
        return out

    @model_validator(mode="after")
    def _recipient_sources(self) -> Tenant:
        if self.recipients is not None and self.recipients_file is not None:
            raise ValueError("set recipients or recipients_file, not both")
        for r in self.recipients or ():
            if r.rpartition("@")[2] not in self.domains:
                raise ValueError(f"recipient {r!r} is not in one of the tenant's domains")
        if self.recipients is not None:
            self._recipient_set = frozenset(self.recipients)
        return self

    def load_recipients_file(self, base: Path) -> None:
        """Reads recipients_file (relative to ``base``); raises ValueError naming the line."""
        if self.recipients_file is None:
            return
        path = base / self.recipients_file
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read recipients file {path}: {exc.strerror}") from None
        found = set()
        for n, line in enumerate(lines, 1):
            r = line.split("#", 1)[0].strip().lower()
            if not r:
                continue
            if not _ADDRESS_RE.match(r) or r.rpartition("@")[2] not in self.domains:
                raise ValueError(f"{path}:{n}: {r!r} is not an address in the tenant's domains")
            found.add(r)
        self._recipient_set = frozenset(found)

    def knows_recipient(self, address: str) -> bool:
        """True when no recipient list is configured or the address is on it."""
        return self._recipient_set is None or address.lower() in self._recipient_set


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
        seen_logins: set[str] = set()
        for t in self.tenants:
            for login in t.auth:
                if login.username in seen_logins:
                    raise ValueError(f"SMTP login {login.username!r} appears twice")
                seen_logins.add(login.username)
        return self


class Tenants:
    """Lookup of tenants by id and by recipient domain."""

    def __init__(self, parsed: TenantsFile, source: str) -> None:
        self.source = source
        self.all = parsed.tenants
        self._by_id = {t.id: t for t in parsed.tenants}
        self._by_domain = {d: t for t in parsed.tenants for d in t.domains}
        self._by_login = {a.username: (t, a) for t in parsed.tenants for a in t.auth}

    def get(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def for_address(self, address: str) -> Tenant | None:
        _, _, domain = address.rpartition("@")
        return self._by_domain.get(domain.lower().rstrip("."))

    def for_login(self, username: str) -> tuple[Tenant, SmtpLogin] | None:
        return self._by_login.get(username)


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
    base = Path(path).parent if path is not None else Path(".")
    for i, t in enumerate(parsed.tenants):
        try:
            t.load_recipients_file(base)
        except ValueError as exc:
            raise ConfigError(f"invalid configuration in {source}:\n  tenants.{i}.recipients_file: {exc}") from None
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
    # Tumbling aggregate windows of mail.events; late events up to grace still count.
    stats_window_seconds: int = Field(default=60, ge=1, le=3600)
    stats_grace_seconds: float = Field(default=10.0, ge=0, le=600)
    # k-anonymity: a cell with fewer messages is merged into "other" in the stream.
    stats_k_anonymity: int = Field(default=5, ge=1, le=10_000)
    # Operator overview page (served by the stats sink and `postwarden overview`);
    # off without a password hash (`postwarden overview hash-password`).
    operator_password_hash: str = Field(default="", repr=False)
    overview_host: str = "127.0.0.1"
    overview_port: int = Field(default=8090, ge=0, le=65535)

    # /healthz, /readyz and /metrics of this process (0 disables). `postwarden up`
    # gives its children consecutive ports from here.
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=8080, ge=0, le=65535)
    # The broker `postwarden up` starts when no cluster is configured: "disk" keeps
    # topics across restarts (S3 storage in SeaweedFS under data_dir/broker),
    # "memory" is lighter but loses what was not yet processed when it stops.
    local_broker_port: int = Field(default=19092, ge=1, le=65535)
    local_broker_storage: str = Field(default="disk", pattern="^(disk|memory)$")
    # First of four consecutive ports of that storage (each also uses port + 10000).
    local_storage_port: int = Field(default=28333, ge=1024, le=55530)

    # Scoring. ClamAV at tcp://host:port or unix:///path; empty disables virus
    # scanning (verdicts then say "unscanned", never "clean").
    clamd_address: str = ""
    # With clamd_address empty, `postwarden up` starts clamd itself on a unix socket under
    # data_dir, with the EICAR test signature and the ClamAV databases found in
    # local_clamd_databases (kept current by freshclam where the machine runs it).
    local_clamd: bool = True
    local_clamd_databases: Path = Path("/var/lib/clamav")
    clamd_timeout: float = Field(default=30.0, gt=0, le=600)
    clamd_connect_timeout: float = Field(default=2.0, gt=0, le=60)
    # Resolvers for SPF/DKIM/DMARC, host[:port] comma separated; empty disables them.
    dns_servers: str = ""
    dns_timeout: float = Field(default=2.0, gt=0, le=30)
    # Upper bound on all sender-authentication lookups of one message together.
    auth_timeout: float = Field(default=5.0, gt=0, le=60)
    # Empty: the model shipped in the package.
    spam_model_path: Path | None = None

    # Message Center and provider API (`postwarden web`), and the address users reach
    # it at: links in digests and alerts are built on public_url.
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8000, ge=1, le=65535)
    public_url: str = "http://127.0.0.1:8000"
    # Where `postwarden web` reaches the Faust workers' internal mailbox API (any worker:
    # each one forwards a request to the worker owning the user's partition).
    worker_url: str = "http://127.0.0.1:8082"
    # How the other workers reach this worker's web server (Faust canonical URL); empty:
    # http://health_host:health_port. In a cluster: the pod's address.
    worker_canonical_url: str = ""
    # Largest batch of records the worker's producer sends to one partition. A full
    # batch makes the agent sending to it wait until the batch has gone out; at 16 KiB
    # (Kafka's default) three or four whole messages filled the deliver topic's batch.
    producer_max_batch_size: int = Field(default=262144, ge=1)
    # Cost of the scrypt password hash (2**n); lower only in tests.
    password_hash_cost: int = Field(default=15, ge=10, le=20)

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

    # --- SMTP ingest (issue 3) ---
    # PEM certificate chain and key for STARTTLS; both or neither.
    smtp_tls_cert_file: Path | None = None
    smtp_tls_key_file: Path | None = Field(default=None, validate_default=True)
    # Expect a PROXY protocol v1/v2 header from a load balancer on every connection.
    proxy_protocol: bool = False
    smtp_max_recipients: int = Field(default=100, ge=1, le=10_000)
    # Unknown-user 550s per connection before 421 (directory harvest defence).
    smtp_max_invalid_recipients: int = Field(default=20, ge=1, le=10_000)
    # Longest line in commands and DATA, CRLF included (RFC 5321 says 1000; real mail is sloppier).
    smtp_max_line_length: int = Field(default=4096, ge=1001, le=1_048_576)
    # Idle time allowed between commands, and total time allowed for one DATA transfer.
    smtp_command_timeout: float = Field(default=300.0, gt=0, le=3600)
    smtp_data_timeout: float = Field(default=600.0, gt=0, le=3600)
    smtp_max_connections: int = Field(default=2000, ge=1, le=1_000_000)
    smtp_max_connections_per_ip: int = Field(default=100, ge=1, le=1_000_000)
    # Messages (MAIL commands) per client IP per minute; 0: no limit.
    smtp_messages_per_ip_per_minute: int = Field(default=6000, ge=0, le=10_000_000)
    # On SIGTERM: how long sessions in a transaction may take to finish.
    smtp_drain_seconds: float = Field(default=30.0, ge=0, le=3600)

    # --- Kafka client security (issue 8); applied to every client by postwarden.kafka_security ---
    kafka_security_protocol: str = "PLAINTEXT"
    # PEM bundle of the CAs that signed the brokers' certificates; empty: the system CAs.
    kafka_ssl_ca_file: Path | None = None
    kafka_ssl_check_hostname: bool = True
    kafka_sasl_mechanism: str = Field(default="", validate_default=True)
    kafka_sasl_username: str = Field(default="", validate_default=True)
    kafka_sasl_password: str = Field(default="", repr=False, validate_default=True)

    # --- throughput and latency (issue 9) ---
    # Longest time a consumer's fetch waits for data. Brokers that do not answer a waiting
    # fetch when data arrives (Tansu) add up to this much latency per stage.
    consumer_fetch_wait_ms: int = Field(default=100, ge=1, le=10_000)
    # Messages each worker scores at once: a serial score agent waits out every clamd
    # round trip, and on busy cores each wait is a scheduling delay.
    score_concurrency: int = Field(default=8, ge=1, le=256)
    # How long the worker's producer waits to fill a batch: one produce request per
    # few milliseconds instead of one per broker round trip (each costs both sides CPU).
    producer_linger_ms: int = Field(default=5, ge=0, le=1000)
    # Faust worker processes `postwarden up` runs; they share the partitions (at most
    # topic_partitions do work). One process uses one core at most.
    worker_processes: int = Field(default=1, ge=1, le=64)

    # --- virus rescans (issue 4): mail whose scan failed waits on mail.rescan ---
    # Seconds after receipt at which mail still unscanned is held as SCAN-UNAVAILABLE.
    rescan_max_age: float = Field(default=86_400.0, gt=0, le=30 * 86_400)
    # Longest pause between two checks whether ClamAV answers again.
    rescan_backoff_max: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        v = v.strip()
        for server in filter(None, (s.strip() for s in v.split(","))):
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return v

    @field_validator("clamd_address")
    @classmethod
    def _clamd(cls, v: str) -> str:
        from streams.virus_scanner import ClamdAddress

        if v.strip():
            ClamdAddress.parse(v)
        return v.strip()

    @field_validator("dns_servers")
    @classmethod
    def _dns(cls, v: str) -> str:
        from streams.dns_resolver import parse_servers

        parse_servers(v)
        return v.strip()

    @field_validator("clickhouse_url")
    @classmethod
    def _ch_url(cls, v: str) -> str:
        if v and not v.startswith(("clickhouse://", "clickhouses://")):
            raise ValueError("must start with clickhouse:// or clickhouses://")
        return v

    @field_validator("smtp_tls_key_file")
    @classmethod
    def _tls_pair(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if (v is None) != (info.data.get("smtp_tls_cert_file") is None):
            raise ValueError("POSTWARDEN_SMTP_TLS_CERT_FILE and _KEY_FILE must be set together")
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

    @field_validator("kafka_security_protocol")
    @classmethod
    def _kafka_protocol(cls, v: str, info: ValidationInfo) -> str:
        v = v.strip().upper()
        if v not in KAFKA_SECURITY_PROTOCOLS:
            raise ValueError(f"must be one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}")
        if v != "PLAINTEXT" and info.data.get("bootstrap_servers") == "":
            raise ValueError("needs POSTWARDEN_BOOTSTRAP_SERVERS: the local broker speaks PLAINTEXT only")
        return v

    @field_validator("kafka_ssl_ca_file")
    @classmethod
    def _kafka_ca(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return v
        _kafka_needs(info, tls=True)
        import ssl

        try:
            with open(v, "rb"):
                pass
            ssl.create_default_context(cafile=str(v))
        except ssl.SSLError:
            raise ValueError(f"{v} holds no PEM CA certificate") from None
        except OSError as exc:
            raise ValueError(f"cannot read {v}: {exc.strerror}") from None
        return v

    @field_validator("kafka_ssl_check_hostname")
    @classmethod
    def _kafka_check_hostname(cls, v: bool, info: ValidationInfo) -> bool:
        if not v:
            _kafka_needs(info, tls=True)
        return v

    @field_validator("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
    @classmethod
    def _kafka_sasl(cls, v: str, info: ValidationInfo) -> str:
        mechanism = info.field_name == "kafka_sasl_mechanism"
        if mechanism:
            v = v.strip().upper()
        protocol = info.data.get("kafka_security_protocol")
        if protocol is None:  # itself invalid, reported there
            return v
        if protocol.startswith("SASL_"):
            if not v:
                raise ValueError(f"required with POSTWARDEN_KAFKA_SECURITY_PROTOCOL={protocol}")
        elif v:
            _kafka_needs(info, tls=False)
        if mechanism and v and v not in KAFKA_SASL_MECHANISMS:
            raise ValueError(f"must be one of {', '.join(KAFKA_SASL_MECHANISMS)}")
        return v

    @property
    def retry_delays(self) -> list[float]:
        return [float(x) for x in self.delivery_retry_delays.split(",")]

    @property
    def max_record_bytes(self) -> int:
        """Largest record a producer or consumer of the worker's and sinks' topics handles.

        Verdicts, routed and held mail carry whole messages: Kafka clients' 1 MB default
        refused larger ones, and a refused record kills its process, which then replays
        it forever. The overhead also covers the quarantine index's largest value.
        """
        return self.max_message_size + 256 * 1024

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


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _kafka_needs(info: ValidationInfo, tls: bool) -> None:
    """Raises unless the (valid) security protocol uses TLS (tls=True) or SASL (tls=False)."""
    protocol = info.data.get("kafka_security_protocol")
    if protocol is None:
        return
    if tls and protocol not in ("SSL", "SASL_SSL"):
        raise ValueError(f"set, but POSTWARDEN_KAFKA_SECURITY_PROTOCOL={protocol} "
                         "does not use TLS (SSL or SASL_SSL do)")
    if not tls and not protocol.startswith("SASL_"):
        raise ValueError(f"set, but POSTWARDEN_KAFKA_SECURITY_PROTOCOL={protocol} "
                         "does not use SASL (SASL_PLAINTEXT or SASL_SSL do)")


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
