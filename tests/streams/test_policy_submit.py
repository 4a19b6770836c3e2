"""The score agent hands each recipient's verdict to the policy stage in place when that
recipient's partition is active on its worker, and over mail.verdicts when it is not
(streams.policy_agent.submit). Either way the user's own settings decide."""

from __future__ import annotations

import collections

import pytest
from kafka import KafkaProducer

from postwarden.local_services import free_port
from postwarden.records import RoutedMessage, Verdict
from postwarden.topics import DELIVER, QUARANTINE, USER_SETTINGS, USERS_CHANGELOG, VERDICTS
from postwarden.users import new_command
from tests.conftest import service_env, wait_http_ok
from tests.delivery_helpers import logged, wait
from tests.kafka_reader import read_topic
from tests.streams.scoring_fixtures import plain_message
from tests.streams.test_rescan import RECOVERED, envelope, produce_inbound

# ANN has switched filtering off; the mixed case reaches the ingest node as the sender wrote it.
ANN = "ann@example.com"
RECIPIENTS = ["ANN@Example.com", *(f"user{i}@example.net" for i in range(11))]


def switch_filtering_off(bootstrap: str, address: str) -> None:
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all")
    try:
        cmd = new_command("example", address, "upsert", {"filtering": False})
        producer.send(USER_SETTINGS.name, key=address.encode(), value=cmd.encode())
        producer.flush(30)
    finally:
        producer.close()
    assert read_topic(bootstrap, USERS_CHANGELOG.name, lambda r: len(r) >= 1, timeout=30)


def routed_all(bootstrap: str, expected: int) -> list[RoutedMessage]:
    records = read_topic(bootstrap, DELIVER.name, lambda r: False, timeout=1.0)
    held = read_topic(bootstrap, QUARANTINE.name, lambda r: False, timeout=1.0)
    out = [RoutedMessage.decode(r.value) for r in records]
    assert len(out) + len(held) <= expected, "a recipient was routed twice"
    return out if len(out) + len(held) == expected else []


def send_verdict(bootstrap: str, verdict: Verdict) -> None:
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all")
    try:
        producer.send(VERDICTS.name, key=verdict.recipient.encode(), value=verdict.encode())
        producer.flush(30)
    finally:
        producer.close()


def start_worker(spawn, env: dict[str, str], name: str):
    health = free_port()
    worker = spawn(["worker"], {**env, "POSTWARDEN_HEALTH_PORT": str(health)}, name)
    worker.ready = f"http://127.0.0.1:{health}/readyz"
    wait_http_ok(worker.ready, 60, worker)
    return worker


def test_one_worker_routes_in_place_by_the_users_own_settings(broker, spawn, tmp_path):
    env = service_env(tmp_path, broker.bootstrap)
    worker = start_worker(spawn, env, "worker")
    switch_filtering_off(broker.bootstrap, ANN)
    envs = [envelope(RECIPIENTS) for _ in range(3)]
    produce_inbound(broker.bootstrap, [(e, plain_message()) for e in envs])
    expected = len(envs) * len(RECIPIENTS)
    assert wait(lambda: routed_all(broker.bootstrap, expected), 60), worker.log()[-3000:]

    delivered = routed_all(broker.bootstrap, expected)
    assert len(delivered) == expected  # a plain message, so every recipient gets it
    by_recipient = collections.Counter(m.recipient for m in delivered)
    assert set(by_recipient) == {r.lower() for r in RECIPIENTS}
    assert all(n == len(envs) for n in by_recipient.values())
    assert {m.reason for m in delivered if m.recipient == ANN} == {"filtering_off"}
    assert {m.reason for m in delivered if m.recipient != ANN} == {"clean"}
    # Every partition is active on the only worker: no verdict crossed the broker.
    assert read_topic(broker.bootstrap, VERDICTS.name, lambda r: False, timeout=1.0) == []

    # A verdict that still arrives on mail.verdicts (the rescan path, or an older version
    # that did not lowercase) is routed under its lowercased key, once.
    stray = Verdict(message_id="m-stray", tenant="example", recipient="Ann@EXAMPLE.com",
                    mail_from="a@example.org", received_at=1.0, size=10, spam_score=99.0,
                    category_scores={"spam": 99.0}, categories=["spam"], virus=None, rules=[],
                    scorer="test", raw=plain_message())
    send_verdict(broker.bootstrap, stray)
    assert wait(lambda: routed_all(broker.bootstrap, expected + 1), 30), worker.log()[-3000:]
    mine = [m for m in routed_all(broker.bootstrap, expected + 1) if m.message_id == "m-stray"]
    assert [(m.recipient, m.reason) for m in mine] == [(ANN, "filtering_off")]


@pytest.mark.slow
def test_two_workers_send_the_other_workers_recipients_over_the_topic(broker, spawn, tmp_path):
    env = service_env(tmp_path, broker.bootstrap)
    first = start_worker(spawn, env, "worker-1")
    second = start_worker(spawn, env, "worker-2")
    # Both hold one partition of the two once the join has settled.
    assert wait(lambda: logged(second, RECOVERED), 60), second.log()[-3000:]
    for worker in (first, second):
        wait_http_ok(worker.ready, 60, worker)
    switch_filtering_off(broker.bootstrap, ANN)
    envs = [envelope(RECIPIENTS) for _ in range(6)]
    produce_inbound(broker.bootstrap, [(e, plain_message()) for e in envs])
    expected = len(envs) * len(RECIPIENTS)
    assert wait(lambda: routed_all(broker.bootstrap, expected), 90), \
        first.log()[-2000:] + second.log()[-2000:]

    delivered = routed_all(broker.bootstrap, expected)
    assert collections.Counter((m.message_id, m.recipient) for m in delivered) == {
        (e.message_id, r.lower()): 1 for e in envs for r in RECIPIENTS}
    assert {m.reason for m in delivered if m.recipient == ANN} == {"filtering_off"}
    # Recipients whose partition the scoring worker did not hold went over the topic;
    # the others did not.
    crossed = read_topic(broker.bootstrap, VERDICTS.name, lambda r: False, timeout=1.0)
    assert 0 < len(crossed) < expected
    assert all(Verdict.decode(r.value).recipient == Verdict.decode(r.value).recipient.lower()
               for r in crossed)
