"""Every Kafka topic Postwarden uses, declared once.

Faust does not create source topics and brokers auto-create with their own
partition count, so `postwarden topics create` makes them all up front. All
topics share one partition count: the policy stage joins per-recipient state
with mail.verdicts, which only works when they are co-partitioned.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from postwarden.kafka_security import tls_failure

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value: str
    retention_ms: int
    description: str
    extra_config: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), **self.extra_config}


# Whole messages travel on mail.inbound, so its records may be far larger than
# Kafka's 1 MB default; the ingest node refuses a SIZE setting above this.
INBOUND_MAX_RECORD_BYTES = 64 * 1024 * 1024
INBOUND = TopicSpec(
    "mail.inbound", "message id", "raw RFC 5322 bytes (envelope in record headers)",
    7 * DAY_MS, "accepted mail from the ingest nodes",
    {"max.message.bytes": str(INBOUND_MAX_RECORD_BYTES)},
)
VERDICTS = TopicSpec(
    "mail.verdicts", "recipient address", "Verdict (msgpack)",
    7 * DAY_MS, "one scored record per recipient",
)
DELIVER = TopicSpec(
    "mail.deliver", "tenant", "RoutedMessage (msgpack)",
    7 * DAY_MS, "clean mail waiting for delivery downstream",
)
QUARANTINE = TopicSpec(
    "mail.quarantine", "recipient address", "HeldMessage (msgpack; message and index entry sealed)",
    14 * DAY_MS, "held mail for the quarantine store",
)
NOTIFY = TopicSpec(
    "mail.notify", "recipient address", "notification request (msgpack)",
    7 * DAY_MS, "virus alerts and digests to send",
)
EVENTS = TopicSpec(
    "mail.events", "tenant", "StatsEvent (msgpack, no personal data)",
    3 * DAY_MS, "anonymous events, the only input of analytics",
)

STATS = TopicSpec(
    "mail.stats", "tenant", "StatsWindow (msgpack, k-anonymous aggregates)",
    3 * DAY_MS, "closed aggregate windows for the ClickHouse sink",
)

# Per-user state of the Message Center. Changes are commands keyed by recipient;
# the Faust tables holding users and the quarantine store keep their changelogs
# in compacted topics declared here (not named by Faust) so that they are created
# up front with the shared partition count.
USER_SETTINGS = TopicSpec(
    "mail.user-settings", "recipient address", "UserCommand (msgpack)",
    7 * DAY_MS, "changes to users: settings, passwords, removal",
)
QUARANTINE_ACTIONS = TopicSpec(
    "mail.quarantine-actions", "recipient address", "QuarantineCommand (msgpack)",
    7 * DAY_MS, "release, delete and expiry of quarantined messages",
)
USERS_CHANGELOG = TopicSpec(
    "mail.users-changelog", "recipient address", "UserRecord (msgpack)",
    10 * 365 * DAY_MS, "changelog of the users table", {"cleanup.policy": "compact"},
)
QUARANTINE_INDEX_CHANGELOG = TopicSpec(
    "mail.quarantine-index-changelog", "recipient address [NUL page | NUL message id]",
    "per-user directory, pages of sealed index entries, locators (msgpack)",
    10 * 365 * DAY_MS, "changelog of the per-user quarantine index", {"cleanup.policy": "compact"},
)
QUARANTINE_STORE_CHANGELOG = TopicSpec(
    "mail.quarantine-store-changelog", "recipient NUL message id", "sealed message (msgpack)",
    10 * 365 * DAY_MS, "changelog of the sealed quarantined messages", {"cleanup.policy": "compact"},
)

ALL_TOPICS: tuple[TopicSpec, ...] = (INBOUND, VERDICTS, DELIVER, QUARANTINE, NOTIFY, EVENTS, STATS,
                                     USER_SETTINGS, QUARANTINE_ACTIONS, USERS_CHANGELOG,
                                     QUARANTINE_INDEX_CHANGELOG, QUARANTINE_STORE_CHANGELOG)

# Delivery retries wait in delay tiers: within one tier every record waits the same
# delay, so records are in due order and a consumer only ever waits on the head.
# The delays are settings (POSTWARDEN_DELIVERY_RETRY_DELAYS); a record moves to the
# next tier at each failed attempt. Same key and partition as mail.deliver.
DELIVER_RETRY_TIERS: tuple[TopicSpec, ...] = tuple(
    TopicSpec(f"mail.deliver.retry.{n}", "tenant", "DeliveryRetry (msgpack)", 7 * DAY_MS,
              f"mail waiting for delivery attempt after retry delay {n}")
    for n in range(1, 5)
)
# Final outcome per message id and recipient, written before the source offset is
# committed, so a replay never delivers twice. Partition = the mail.deliver partition.
DELIVERED = TopicSpec(
    "mail.delivered", "message id|recipient", "DeliveryOutcome (msgpack)",
    14 * DAY_MS, "delivered-log: what was delivered or bounced",
    {"cleanup.policy": "compact,delete"},
)
# Digest state per user (pending held mail, last digest); changelog of the notifier,
# partition = the mail.quarantine partition of the recipient.
DIGEST_STATE = TopicSpec(
    "mail.digest.state", "recipient address", "DigestState (msgpack)",
    365 * DAY_MS, "notifier state: held mail not yet in a digest",
    {"cleanup.policy": "compact"},
)
ALL_TOPICS += (*DELIVER_RETRY_TIERS, DELIVERED, DIGEST_STATE)


def topics_document() -> dict:
    """Every topic with its config, as the Helm chart's topics.yaml holds it."""
    return {"topics": [{"name": t.name, "config": t.config()} for t in ALL_TOPICS]}


def create_topics(
    bootstrap: list[str], partitions: int, replication: int = 1, timeout: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Create every declared topic that is missing; returns name -> created|exists.

    Idempotent and safe to run concurrently (an 'already exists' race counts as
    exists). Raises KafkaError if the cluster cannot be reached within timeout.
    ``security``: postwarden.kafka_security.client_kwargs of the settings.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with _client_errors_quiet():
                return _create_missing(bootstrap, partitions, replication, deadline, security or {})
        except KafkaError as exc:
            # A broker that just started may answer before its storage is ready.
            if time.monotonic() >= deadline:
                raise KafkaError(f"cannot create topics on {','.join(bootstrap)}: {exc}") from exc
            log.debug("topic creation failed, retrying: %s", exc)
            time.sleep(0.5)


@contextlib.contextmanager
def _client_errors_quiet() -> Iterator[None]:
    # A broker just started (Tansu) can answer CreateTopics with a response kafka-python
    # cannot parse; the retry above handles it, and the client's ERROR lines about it
    # would only alarm whoever starts `postwarden up`. A final failure is still raised.
    client = logging.getLogger("kafka")
    level = client.level
    client.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client.setLevel(level)


def _create_missing(bootstrap: list[str], partitions: int, replication: int,
                    deadline: float, security: Mapping[str, Any]) -> dict[str, str]:
    admin = _connect(bootstrap, deadline, security)
    try:
        existing = set(admin.list_topics())
        result: dict[str, str] = {}
        for spec in ALL_TOPICS:
            if spec.name in existing:
                result[spec.name] = "exists"
                continue
            topic = NewTopic(spec.name, partitions, replication, topic_configs=spec.config())
            try:
                admin.create_topics([topic], timeout_ms=int(max(1.0, deadline - time.monotonic()) * 1000))
                result[spec.name] = "created"
            except TopicAlreadyExistsError:
                result[spec.name] = "exists"
        return result
    finally:
        admin.close()


def _connect(bootstrap: list[str], deadline: float, security: Mapping[str, Any]) -> KafkaAdminClient:
    last: Exception | None = None
    while time.monotonic() < deadline:
        remaining_ms = max(500, int((deadline - time.monotonic()) * 1000))
        try:
            return KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="postwarden-admin",
                request_timeout_ms=min(10_000, remaining_ms),
                bootstrap_timeout_ms=remaining_ms,
                **security,
            )
        except KafkaError as exc:
            last = exc
            time.sleep(0.5)
    why = tls_failure(bootstrap, security)
    raise KafkaError(f"cannot reach the Kafka cluster at {','.join(bootstrap)}: {why or last}")


# Mail whose virus scan could not happen (clamd unreachable) waits here, out of the
# users' quarantines, until streams.rescan_agent scans it again; only after
# POSTWARDEN_RESCAN_MAX_AGE is it held as SCAN-UNAVAILABLE.
RESCAN = TopicSpec(
    "mail.rescan", "message id", "ScanRetry (msgpack: envelope + raw bytes)",
    7 * DAY_MS, "mail waiting for a virus scan while ClamAV is unreachable",
)
ALL_TOPICS += (RESCAN,)
