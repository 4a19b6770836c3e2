"""The audit that ends every fault test: nothing accepted was lost, nothing arrived twice.

A message is accepted when the ingest node answered 250; the ledger keeps its
message id (from the reply) and recipients. The sender behaves like a real
MTA: what gets a 4xx or a dropped connection is sent again later, and since
such an attempt may still have been written, its token (in the Subject) is
kept as "unsure": a copy of it may show up under a message id the ledger does
not know, which is allowed (SMTP is at-least-once between MTAs), nothing else is.

The audit then reads the two places mail can end up, the downstream SMTP
servers (what they received) and the quarantine (what the partition owner's
mailbox API lists), and waits until the pipeline is settled: every consumer
group has committed to the true end of its inputs, so no replay can still
add a copy. It asserts, per (message id, recipient) of the ledger, delivered
or quarantined exactly once, on the expected side; and over everything the
downstream servers ever received, no (message id, recipient) twice. Topics
may hold duplicates (at-least-once); they are counted to show a fault replayed.
"""

from __future__ import annotations

import itertools
import json
import re
import smtplib
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition

from postwarden import internal_api
from postwarden.held_mail import HeldMessage
from postwarden.keyring import Keyring
from postwarden.records import Envelope, RecordError, RoutedMessage, Verdict
from postwarden.topics import DELIVER, INBOUND, QUARANTINE, RESCAN, VERDICTS
from streams.scan_retry import ScanRetry
from tests.conftest import ARTIFACTS, REPO
from tests.smtp_servers import Received

Key = tuple[str, str]  # (message id, recipient)

# The ingest node's Received header names the message id it answered with.
RECEIVED_ID = re.compile(rb"\(Postwarden\) with \S+ id ([0-9a-f]{32});")
TOKEN = re.compile(r"\[fault-(\d+)\]")
_tokens = itertools.count(1)

HAM = (REPO / "examples/hello.eml").read_bytes().replace(b"\n", b"\r\n")
SPAM = (REPO / "examples/spam.eml").read_bytes().replace(b"\n", b"\r\n")
SPAM_SUBJECT = b"Subject: =?utf-8?B?R0VUIDgwJSBPRkYgLSBMSU1JVEVEIFRJTUUgT0ZGRVIhISE=?="


def mail(kind: str, token: str) -> bytes:
    """A corpus message with the token in its Subject, where both sinks can show it."""
    if kind == "ham":
        return HAM.replace(b"Subject: Lunch on Thursday?", f"Subject: Lunch on Thursday? {token}".encode())
    if kind == "spam":
        return SPAM.replace(SPAM_SUBJECT, f"Subject: GET 80% OFF - LIMITED TIME OFFER!!! {token}".encode())
    raise ValueError(f"unknown kind {kind!r}")


@dataclass(frozen=True)
class Accepted:
    message_id: str
    recipient: str
    tenant: str
    token: str
    expect: str | None  # "deliver" | "quarantine" | None (either)


@dataclass
class Ledger:
    accepted: dict[Key, Accepted] = field(default_factory=dict)
    unsure: set[str] = field(default_factory=set)  # tokens of attempts answered without 250
    refusals: int = 0

    def recipients(self) -> set[tuple[str, str]]:
        return {(a.tenant, a.recipient) for a in self.accepted.values()}

    def merged(self, other: Ledger) -> Ledger:
        return Ledger({**self.accepted, **other.accepted}, self.unsure | other.unsure,
                      self.refusals + other.refusals)


class Sender:
    """One SMTP client connection to the ingest node that retries like an MTA."""

    def __init__(self, port: int, ledger: Ledger, retry_for: float = 60.0) -> None:
        self.port, self.ledger, self.retry_for = port, ledger, retry_for
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        if self._smtp is None:
            smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
            smtp.ehlo("client.test")
            self._smtp = smtp
        return self._smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            finally:
                self._smtp = None

    def send(self, tenant: str, kind: str, recipients: list[str], expect: str | None) -> str:
        """Sends until a 250; returns the message id. Every failed attempt is recorded unsure."""
        token = f"[fault-{next(_tokens)}]"
        raw = mail(kind, token)
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                smtp = self._connect()
                smtp.rset()
                code, reply = smtp.mail("sender@x.example")
                if code == 250:
                    for r in recipients:
                        code, reply = smtp.rcpt(r)
                        if code != 250:
                            break
                if code == 250:
                    code, reply = smtp.data(raw)
                if code == 250:
                    message_id = reply.decode().rsplit(" ", 1)[1]
                    for r in recipients:
                        self.ledger.accepted[(message_id, r)] = Accepted(message_id, r, tenant, token, expect)
                    return message_id
                assert 400 <= code < 500, f"permanent refusal {code} {reply!r}"
                if code == 421:
                    self._drop()
            except (OSError, smtplib.SMTPException):
                self._drop()
            self.ledger.unsure.add(token)
            self.ledger.refusals += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"no 250 for {token} within {self.retry_for}s")
            time.sleep(0.2)

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._drop()


# --- where mail ends up -------------------------------------------------------------------


def delivered(received: Iterable[Received]) -> tuple[Counter, dict[Key, str]]:
    """Copies received downstream per (message id, recipient), and each key's token."""
    copies: Counter = Counter()
    tokens: dict[Key, str] = {}
    for r in received:
        found = RECEIVED_ID.search(r.content)
        assert found, f"a downstream message without our Received header: {r.content[:300]!r}"
        token = TOKEN.search(r.content.decode("utf-8", "replace"))
        for rcpt in r.rcpt_tos:
            key = (found.group(1).decode(), rcpt)
            copies[key] += 1
            tokens[key] = f"[fault-{token.group(1)}]" if token else ""
    return copies, tokens


class QuarantineReader:
    """The quarantine as the Message Center sees it: the workers' mailbox API."""

    def __init__(self, worker_url: str, keyring: Keyring) -> None:
        self.base = worker_url.rstrip("/")
        self.token = internal_api.token(keyring)

    def held(self, tenant: str, recipient: str, timeout: float = 30.0) -> list[dict]:
        entries: list[dict] = []
        offset = 0
        deadline = time.monotonic() + timeout
        while True:
            url = (f"{self.base}{internal_api.path(recipient, 'quarantine')}?tenant={tenant}"
                   f"&limit=100&offset={offset}")
            request = urllib.request.Request(url, headers={internal_api.HEADER: self.token})
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    page = json.load(resp)
            except (urllib.error.HTTPError, OSError) as exc:
                # 503 while the worker rebalances or restarts: ask again.
                if time.monotonic() > deadline:
                    raise AssertionError(f"mailbox API did not answer: {exc}") from exc
                time.sleep(0.3)
                continue
            entries += page["entries"]
            offset += len(page["entries"])
            if not page["entries"] or offset >= page["total"]:
                return entries

    def copies(self, recipients: Iterable[tuple[str, str]]) -> tuple[Counter, dict[Key, dict]]:
        copies: Counter = Counter()
        found: dict[Key, dict] = {}
        for tenant, recipient in recipients:
            for e in self.held(tenant, recipient):
                key = (e["message_id"], recipient)
                copies[key] += 1
                found[key] = e
        return copies, found


def true_ends(bootstrap: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """Offset after the last record of each partition, by reading to it: the local broker's
    ListOffsets can answer short of the end (see notes on Tansu)."""
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False,
                             consumer_timeout_ms=300)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        reported = consumer.end_offsets(tps)
        ends = {tp: 0 for tp in tps}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300, max_records=10_000)
            for tp, records in batch.items():
                ends[tp] = records[-1].offset + 1
            if not batch and all(consumer.position(tp) >= reported[tp] for tp in tps):
                return ends
        raise AssertionError(f"could not read {sorted(set(t.topic for t in tps))} to the end")
    finally:
        consumer.close()


def lagging(bootstrap: str, groups: dict[str, tuple[str, ...]]) -> list[str]:
    """Partitions a consumer group has not committed to the end of; empty when settled."""
    out = []
    for group, topics in groups.items():
        ends = true_ends(bootstrap, topics)
        consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=group, enable_auto_commit=False)
        try:
            for tp, end in ends.items():
                committed = consumer.committed(tp) or 0
                if committed < end:
                    out.append(f"{group} {tp.topic}[{tp.partition}] at {committed} of {end}")
        finally:
            consumer.close(autocommit=False)
    return out


def topic_copies(bootstrap: str, keys: set[Key]) -> Counter:
    """How often each ledger key was written to mail.deliver and mail.quarantine together."""
    from tests.kafka_reader import read_topic

    copies: Counter = Counter()
    for topic in (DELIVER.name, QUARANTINE.name):
        for record in read_topic(bootstrap, topic, lambda r: False, timeout=1.5):
            try:
                key = (HeldMessage if topic == QUARANTINE.name else RoutedMessage).decode(record.value).dedupe_key
            except RecordError:
                continue
            if key in keys:
                copies[key] += 1
    return copies


def trail(bootstrap: str, keys: Iterable[Key]) -> dict[str, list[str]]:
    """Where lost recipients stopped: the topics each one reached (for the failure message)."""
    from tests.kafka_reader import read_topic

    def inbound(r):
        envelope = Envelope.from_headers(r.headers)
        return [(envelope.message_id, rcpt) for rcpt in envelope.rcpt_tos]

    decoders = {INBOUND.name: inbound,
                VERDICTS.name: lambda r: [((v := Verdict.decode(r.value)).message_id, v.recipient)],
                RESCAN.name: lambda r: [(ScanRetry.decode(r.value).message_id, None)],
                DELIVER.name: lambda r: [RoutedMessage.decode(r.value).dedupe_key],
                QUARANTINE.name: lambda r: [HeldMessage.decode(r.value).dedupe_key]}
    wanted = set(keys)
    found: dict[Key, list[str]] = {k: [] for k in wanted}
    for topic, decode in decoders.items():
        for record in read_topic(bootstrap, topic, lambda r: False, timeout=1.5):
            try:
                pairs = decode(record)
            except (RecordError, ValueError, KeyError):
                continue
            for message_id, recipient in pairs:
                for key in wanted:
                    if key[0] == message_id and recipient in (None, key[1]):
                        found[key].append(f"{topic}[{record.partition}]@{record.offset}")
    return found


# --- the audit ----------------------------------------------------------------------------


@dataclass
class Report:
    accepted: int
    delivered: int
    quarantined: int
    topic_duplicates: int  # extra copies on mail.deliver/mail.quarantine, removed by the sinks
    unsure_copies: int  # copies of attempts that got no 250 (allowed)
    refusals: int
    quarantine_entries: dict[Key, dict]


def audit(ledger: Ledger, received: Callable[[], list[Received]], quarantine: QuarantineReader,
          bootstrap: str, groups: dict[str, tuple[str, ...]], timeout: float = 60.0,
          everything_received: Callable[[], list[Received]] | None = None) -> Report:
    """Waits until every accepted recipient is accounted for and the groups settled, then checks."""
    assert ledger.accepted, "an audit of nothing proves nothing"
    wanted = set(ledger.accepted)
    deadline = time.monotonic() + timeout
    while True:
        d_copies, d_tokens = delivered(received())
        q_copies, q_entries = quarantine.copies(ledger.recipients())
        seen = set(d_copies) | set(q_copies)
        behind = lagging(bootstrap, groups) if wanted <= seen else ["not all seen"]
        if not behind or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    missing = sorted(wanted - seen)
    assert not missing, (f"{len(missing)} accepted recipients lost, e.g. {missing[:3]}; "
                         f"lag: {lagging(bootstrap, groups)}; reached: {trail(bootstrap, missing[:5])}")
    assert not behind, f"pipeline did not settle: {behind}"
    both = sorted(k for k in wanted if d_copies[k] and q_copies[k])
    assert not both, f"delivered and quarantined: {both[:3]}"
    twice = sorted(k for k, n in (d_copies + q_copies).items() if n > 1)
    assert not twice, f"{len(twice)} recipients got copies twice, e.g. {twice[:3]}"
    all_copies, _ = delivered((everything_received or received)())
    twice_anywhere = sorted(k for k, n in all_copies.items() if n > 1)
    assert not twice_anywhere, f"a downstream server received twice: {twice_anywhere[:3]}"
    wrong = sorted((k, a.expect) for k, a in ledger.accepted.items()
                   if a.expect == "deliver" and not d_copies[k] or a.expect == "quarantine" and not q_copies[k])
    assert not wrong, f"{len(wrong)} went the wrong way, e.g. {wrong[:3]}"
    q_tokens = {k: (TOKEN.search(e.get("subject", "")) or [""])[0] for k, e in q_entries.items()}
    extra = {k: d_tokens.get(k) or q_tokens.get(k) for k in seen - wanted}
    unexplained = sorted(k for k, token in extra.items() if token not in ledger.unsure)
    assert not unexplained, f"copies of mail never attempted or already accepted: {unexplained[:3]}"
    on_topics = topic_copies(bootstrap, wanted)
    return Report(
        accepted=len(wanted), delivered=sum(1 for k in wanted if d_copies[k]),
        quarantined=sum(1 for k in wanted if q_copies[k]),
        topic_duplicates=sum(n - 1 for n in on_topics.values() if n > 1),
        unsure_copies=len(extra), refusals=ledger.refusals,
        quarantine_entries={k: q_entries[k] for k in wanted if k in q_entries})


def write_report(name: str, report: Report, seconds: float) -> None:
    """One line per audited fault in test-artifacts/fault-audits.jsonl: what each run proved."""
    line = {"fault": name, "seconds": round(seconds, 1), **{
        k: v for k, v in report.__dict__.items() if k != "quarantine_entries"}}
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "fault-audits.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
