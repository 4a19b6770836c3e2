"""Every kind of Kafka client Postwarden runs, against a broker reachable only over TLS.

The broker is a real Tansu behind a real TLS terminator (tests/kafka_tls.py):
a client that did not use TLS with the right CA gets nowhere, and the proxy
counts the handshakes that did happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.server import IngestNode
from postwarden.config import Settings, load_settings
from postwarden.kafka_security import client_kwargs
from postwarden.local_services import free_port
from postwarden.records import RoutedMessage
from postwarden.topics import DELIVER, INBOUND, QUARANTINE, create_topics
from sinks.delivery_sink import DeliverySink
from sinks.notifier import Notifier
from sinks.outbound_queue import scan_queue
from sinks.stats_sink import StatsSink
from sinks.stats_store import EmbeddedStatsStore
from streams.stats_windows import StatsWindows
from tests.conftest import REPO, service_env, wait_http_ok
from tests.delivery_helpers import wait_until
from tests.ingest.smtp_client import transaction
from tests.kafka_reader import read_topic
from tests.kafka_tls import TlsBroker, make_ca
from tests.smtp_servers import start_server, tenants_yaml

pytestmark = pytest.mark.slow


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    broker = TlsBroker(tmp_path).start()
    yield broker
    broker.stop()


@pytest.fixture
def tls_broker_with_topics(tls_broker: TlsBroker) -> TlsBroker:
    s = load_settings(tls_broker.env())
    create_topics(s.bootstrap_list, partitions=2, security=client_kwargs(s))
    return tls_broker


def env_for(broker: TlsBroker, tmp_path: Path, ca_file: Path | None = None, **extra: str) -> dict[str, str]:
    return {**service_env(tmp_path, broker.bootstrap), **broker.env(ca_file), **extra}


def settings_for(broker: TlsBroker, tmp_path: Path, ca_file: Path | None = None, **extra: str) -> Settings:
    env = env_for(broker, tmp_path, ca_file, **extra)
    return load_settings({k: v for k, v in env.items() if k.startswith("POSTWARDEN_")})


def topics_create(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "postwarden.cli", "topics", "create", *args],
                          env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


def test_topics_create_over_tls_and_a_clear_error_with_the_wrong_ca(tls_broker, tmp_path):
    out = topics_create(env_for(tls_broker, tmp_path))
    assert out.returncode == 0, out.stderr
    assert "mail.inbound: created" in out.stdout and "mail.digest.state: created" in out.stdout
    assert tls_broker.proxy.handshakes >= 1
    # The topics are really there: listed again over TLS by another client.
    s = load_settings(tls_broker.env())
    assert set(create_topics(s.bootstrap_list, 2, security=client_kwargs(s)).values()) == {"exists"}

    wrong_ca = make_ca(tmp_path, "other-ca")[0]
    out = topics_create(env_for(tls_broker, tmp_path, wrong_ca), "--timeout", "2")
    assert out.returncode == 1
    assert "cannot create topics" in out.stderr and "TLS handshake failed" in out.stderr
    assert "certificate verify failed" in out.stderr, out.stderr

    # A plaintext client never gets through the TLS port either.
    plain = {**env_for(tls_broker, tmp_path), "POSTWARDEN_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    del plain["POSTWARDEN_KAFKA_SSL_CA_FILE"]
    assert topics_create(plain, "--timeout", "2").returncode == 1


async def test_mail_goes_from_smtp_through_the_worker_to_delivery_over_tls(
        tls_broker_with_topics, tmp_path, spawn):
    broker = tls_broker_with_topics
    smtp_out = start_server()
    tenants = tenants_yaml(tmp_path / "tenants.yaml",
                           [{"host": "127.0.0.1", "port": smtp_out.port, "tls": "none"}])
    common = {"POSTWARDEN_TENANTS_FILE": str(tenants), "POSTWARDEN_DELIVERY_TIMEOUT": "5",
              "POSTWARDEN_DELIVERY_COMMIT_SECONDS": "0.2", "POSTWARDEN_SMTP_HOSTNAME": "gw.test",
              "POSTWARDEN_NOTIFY_FROM": "postmaster@gw.test"}
    worker_health = free_port()
    worker = spawn(["worker"], env_for(broker, tmp_path, **common,
                                       POSTWARDEN_HEALTH_PORT=str(worker_health)), "worker")
    settings = settings_for(broker, tmp_path, **common, POSTWARDEN_SMTP_PORT=str(free_port()),
                            POSTWARDEN_HEALTH_PORT="0", POSTWARDEN_PRODUCE_TIMEOUT="5")
    security = client_kwargs(settings)
    ingest = IngestNode(settings)
    store = EmbeddedStatsStore(tmp_path / "chdb")
    stop = asyncio.Event()
    delivery, notifier = DeliverySink(settings), Notifier(settings)
    stats_sink, windows = StatsSink(settings, store), StatsWindows(settings)
    services = [delivery, notifier, stats_sink, windows]
    tasks = [asyncio.create_task(s.run(stop)) for s in services]
    await ingest.start()
    try:
        body = (REPO / "examples/hello.eml").read_bytes().replace(b"\n", b"\r\n")
        code, reply = await asyncio.to_thread(
            transaction, settings.smtp_port, "bob@x.example", ["ann@acme.test"], body)
        assert code == 250, reply
        message_id = reply.rsplit(" ", 1)[1]
        inbound = await asyncio.to_thread(read_topic, broker.bootstrap, INBOUND.name,
                                          lambda r: len(r) >= 1, 10, security)
        assert [r.key.decode() for r in inbound] == [message_id]

        # Every consumer joined its group over TLS and got partitions.
        assert await wait_until(lambda: all(s.ready for s in services) or any(t.done() for t in tasks), 40)
        assert not [t for t in tasks if t.done()], [t.exception() for t in tasks if t.done()]
        assert stats_sink._consumer.assignment() and delivery._consumer.assignment()

        await asyncio.to_thread(wait_http_ok, f"http://127.0.0.1:{worker_health}/readyz", 60, worker)
        routed = await asyncio.to_thread(
            read_topic, broker.bootstrap, DELIVER.name, lambda r: len(r) >= 1, 40, security)
        assert [RoutedMessage.decode(r.value).message_id for r in routed] == [message_id], worker.log()[-3000:]
        # ... and the delivery sink relayed it downstream.
        received = await asyncio.to_thread(smtp_out.recorder.wait_for, 1, 20)
        assert [r.rcpt_tos for r in received] == [["ann@acme.test"]]
        queue = await asyncio.to_thread(scan_queue, settings.bootstrap_list, "pw-test-queue",
                                        timeout=5, security=security)
        assert isinstance(queue.summary(0), list)
        assert not read_topic(broker.bootstrap, QUARANTINE.name, lambda r: False, 0.5, security)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await ingest.stop(drain_seconds=1)
        await asyncio.wait(tasks, timeout=20)
        store.close()
        smtp_out.stop()
    assert tls_broker_with_topics.proxy.handshakes >= 8


async def test_ingest_with_the_wrong_ca_answers_451_and_logs_why(tls_broker_with_topics, tmp_path, caplog):
    broker = tls_broker_with_topics
    tenants = tenants_yaml(tmp_path / "tenants.yaml", [{"host": "127.0.0.1", "port": 25}])
    wrong_ca = make_ca(tmp_path, "other-ca")[0]
    settings = settings_for(broker, tmp_path, wrong_ca, POSTWARDEN_TENANTS_FILE=str(tenants),
                            POSTWARDEN_SMTP_PORT=str(free_port()), POSTWARDEN_HEALTH_PORT="0",
                            POSTWARDEN_PRODUCE_TIMEOUT="2")
    ingest = IngestNode(settings)
    caplog.set_level(logging.WARNING, logger="ingest")
    await ingest.start()
    try:
        code, reply = await asyncio.to_thread(
            transaction, settings.smtp_port, "bob@x.example", ["ann@acme.test"], b"Subject: x\r\n\r\nhi\r\n")
        assert code == 451, reply
        reasons = [getattr(r, "reason", "") for r in caplog.records if r.name.startswith("ingest")]
        assert any(r.startswith("TLS handshake failed") and "certificate verify failed" in r
                   for r in reasons), reasons
    finally:
        await ingest.stop(drain_seconds=1)
    # Nothing got onto the topic by another way.
    good = load_settings(broker.env())
    assert not read_topic(broker.bootstrap, INBOUND.name, lambda r: False, 0.5, client_kwargs(good))
