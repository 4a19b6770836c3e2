"""Mail that could not be virus-scanned waits on mail.rescan and is routed by its real
result once clamd answers again (streams.scan_retry, streams.rescan_agent)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from postwarden.config import load_settings
from postwarden.held_mail import HeldMessage, open_index, unpack_sealed
from postwarden.local_services import free_port
from postwarden.records import Envelope, RoutedMessage, new_message_id
from postwarden.sealing import Sealer
from postwarden.topics import DELIVER, INBOUND, QUARANTINE, RESCAN, VERDICTS
from streams.clamd_service import ClamdServer
from streams.scan_retry import Rescanner, ScanRetry, scan_rescan_queue
from streams.scoring_engine import SCAN_UNAVAILABLE, ScoringEngine
from streams.virus_scanner import ClamdAddress, ClamdScanner
from tests.conftest import REPO, service_env, wait_http_ok
from tests.delivery_helpers import logged, wait
from tests.kafka_reader import read_topic
from tests.streams.scoring_fixtures import EICAR, plain_message


def envelope(rcpts: list[str], received_at: float | None = None) -> Envelope:
    return Envelope(new_message_id(), "example", "sender@x.example", rcpts, "192.0.2.1",
                    "mail.x.example", True, received_at or time.time(), 100, "node-1")


@pytest.fixture
def clamd_later(tmp_path):
    """A clamd whose port is known before it runs: the tests start it when they choose."""
    server = ClamdServer(tmp_path / "clamd")
    yield server
    server.stop()


def rescanner_for(server: ClamdServer, max_age: float, backoff_max: float = 0.2,
                  waits: list[bool] | None = None) -> Rescanner:
    scanner = ClamdScanner(ClamdAddress.parse(server.address), timeout=5, connect_timeout=0.5)
    engine = ScoringEngine(scanner=scanner)
    return Rescanner(engine.score, scanner.ping, max_age, backoff_max,
                     on_wait=(waits.append if waits is not None else None))


async def test_waits_while_clamd_is_down_then_routes_by_the_real_result(clamd_later):
    waits: list[bool] = []
    rescanner = rescanner_for(clamd_later, max_age=60, waits=waits)
    clean = ScanRetry.of(envelope(["ann@example.com"]), plain_message(), time.time())
    infected = ScanRetry.of(envelope(["ann@example.com"]),
                            plain_message(body=EICAR.decode() + "\n"), time.time())
    task = asyncio.ensure_future(rescanner.rescan(clean))
    await asyncio.sleep(1.5)
    assert not task.done() and waits == [True]  # nothing passes while clamd is down
    clamd_later.start()
    done = await asyncio.wait_for(task, 15)
    assert done.outcome == "clean" and done.result.virus is None
    assert "scan_failed" not in done.result.categories and waits[-1] is False
    found = await rescanner.rescan(infected)
    assert found.outcome == "virus" and found.result.virus.startswith("Eicar-Test-Signature")


async def test_mail_older_than_the_max_age_is_held_as_scan_unavailable(clamd_later):
    rescanner = rescanner_for(clamd_later, max_age=1.0)
    retry = ScanRetry.of(envelope(["ann@example.com"]), plain_message(), time.time())
    started = time.monotonic()
    done = await asyncio.wait_for(rescanner.rescan(retry), 10)
    assert done.outcome == "expired" and done.result.virus == SCAN_UNAVAILABLE
    assert "scan_failed" in done.result.categories
    assert time.monotonic() - started < 5


async def test_a_message_clamd_keeps_refusing_does_not_block_the_queue(clamd):
    # clamd is up but refuses this message (over StreamMaxLength is the real-world case;
    # here a scanner whose timeout no scan can meet).
    scanner = ClamdScanner(ClamdAddress.parse(clamd.address), timeout=0.000001)
    engine = ScoringEngine(scanner=scanner)
    rescanner = Rescanner(engine.score, scanner.ping, 3600, 0.1)
    retry = ScanRetry.of(envelope(["ann@example.com"]), plain_message(), time.time())
    done = await asyncio.wait_for(rescanner.rescan(retry), 10)
    assert done.outcome == "failing" and done.result.virus == SCAN_UNAVAILABLE


async def test_a_rebalance_takes_the_waiting_record_back(clamd_later):
    rebalancing = False
    scanner = ClamdScanner(ClamdAddress.parse(clamd_later.address), timeout=5, connect_timeout=0.5)
    rescanner = Rescanner(ScoringEngine(scanner=scanner).score, scanner.ping, 3600, 30,
                          should_yield=lambda: rebalancing)
    task = asyncio.ensure_future(rescanner.rescan(
        ScanRetry.of(envelope(["ann@example.com"]), plain_message(), time.time())))
    await asyncio.sleep(1.0)
    assert not task.done()
    rebalancing = True
    done = await asyncio.wait_for(task, 2)
    assert done.outcome == "requeued" and done.result is None


def test_undecodable_rescan_record_is_refused():
    from postwarden.records import RecordError

    with pytest.raises(RecordError):
        ScanRetry.decode(b"\x93garbage")


def produce_inbound(bootstrap: str, items: list[tuple[Envelope, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all")
    try:
        for env, raw in items:
            producer.send(INBOUND.name, key=env.message_id.encode(), value=raw,
                          headers=env.to_headers())
        producer.flush(30)
    finally:
        producer.close()


def committed_to_end(bootstrap: str, group: str, topic: str) -> bool:
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(tps)
        return all((consumer.committed(tp) or 0) >= ends[tp] for tp in tps)
    finally:
        consumer.close(autocommit=False)


def rescan_topic_state(bootstrap: str) -> list[tuple[int, int, str]]:
    """(partition, offset, message id) of every mail.rescan record, and the group's commits."""
    records = read_topic(bootstrap, RESCAN.name, lambda r: False, timeout=1.5)
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id="postwarden", enable_auto_commit=False)
    try:
        committed = [(p, consumer.committed(TopicPartition(RESCAN.name, p))) for p in (0, 1)]
    finally:
        consumer.close(autocommit=False)
    return [(r.partition, r.offset, ScanRetry.decode(r.value).message_id) for r in records] + committed


def routed(bootstrap: str, topic: str) -> list[RoutedMessage]:
    return [RoutedMessage.decode(r.value)
            for r in read_topic(bootstrap, topic, lambda r: False, timeout=1.5)]


def held_index(bootstrap: str, env: dict[str, str]) -> list[tuple[tuple[str, str], dict]]:
    """mail.quarantine's records, with the index fields the policy agent sealed."""
    sealer = Sealer(load_settings(env).keyring())
    out = []
    for r in read_topic(bootstrap, QUARANTINE.name, lambda r: False, timeout=1.5):
        held = HeldMessage.decode(r.value)
        out.append((held.dedupe_key, open_index(sealer, held.tenant, held.recipient,
                                                 held.message_id, unpack_sealed(held.index))))
    return out


# Faust logs this at the end of every rebalance, once the worker has its partitions.
RECOVERED = "[^---Recovery]: Recovery complete"


@pytest.mark.slow
def test_clamd_outage_and_worker_restart_lose_nothing_and_route_once(
        broker, clamd_later, spawn, tmp_path):
    health = free_port()
    env = service_env(tmp_path, broker.bootstrap, POSTWARDEN_HEALTH_PORT=str(health),
                      POSTWARDEN_CLAMD_ADDRESS=clamd_later.address,
                      POSTWARDEN_CLAMD_CONNECT_TIMEOUT="0.5", POSTWARDEN_RESCAN_BACKOFF_MAX="1")
    worker = spawn(["worker"], env, "worker-1")
    wait_http_ok(f"http://127.0.0.1:{health}/readyz", 60, worker)

    clean_env, virus_env = envelope(["ann@example.com", "bo@example.net"]), envelope(["ann@example.com"])
    produce_inbound(broker.bootstrap, [(clean_env, plain_message()),
                                       (virus_env, plain_message(body=EICAR.decode() + "\n"))])
    waiting = read_topic(broker.bootstrap, RESCAN.name, lambda r: len(r) >= 2, timeout=60)
    assert {ScanRetry.decode(r.value).message_id for r in waiting} == {
        clean_env.message_id, virus_env.message_id}, worker.log()[-3000:]
    # The score agent is done with them (so a restart cannot score them again)...
    assert wait(lambda: committed_to_end(broker.bootstrap, "postwarden", INBOUND.name), 30)
    time.sleep(2)
    # ...and nothing was routed or even given a verdict while clamd is down.
    for topic in (VERDICTS.name, DELIVER.name, QUARANTINE.name):
        assert read_topic(broker.bootstrap, topic, lambda r: False, timeout=1) == [], topic
    assert scan_rescan_queue([broker.bootstrap], "postwarden").waiting == 2
    queue = subprocess.run([sys.executable, "-m", "postwarden.cli", "queue"], env=env,
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert queue.returncode == 0, queue.stderr
    assert "waiting for a virus rescan: 2" in queue.stdout and "@" not in queue.stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{health}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert "postwarden_rescan_deferred_total 2.0" in metrics
    assert "postwarden_rescan_waiting_for_clamd 1.0" in metrics

    # A second worker joins while the first waits for clamd: the rebalance must not wait
    # for clamd. Then the first dies, and clamd comes back.
    recoveries = len(logged(worker, RECOVERED))
    again = spawn(["worker"], {**env, "POSTWARDEN_HEALTH_PORT": str(free_port())}, "worker-2")
    assert wait(lambda: len(logged(worker, RECOVERED)) > recoveries and logged(again, RECOVERED), 40), \
        worker.log()[-3000:]
    assert logged(worker, "rescan requeued for a rebalance")
    worker.proc.kill()
    worker.proc.wait(10)
    clamd_later.start()

    def everything_routed() -> bool:
        return len(routed(broker.bootstrap, DELIVER.name)) >= 2 and \
            len(held_index(broker.bootstrap, env)) >= 1

    assert wait(everything_routed, 60), f"{rescan_topic_state(broker.bootstrap)}\n{again.log()[-3000:]}"
    time.sleep(3)  # a routing the other way would show here
    delivered = routed(broker.bootstrap, DELIVER.name)
    held = held_index(broker.bootstrap, env)
    # At least once on the topics (a record given back at a rebalance can be replayed
    # too; the sinks keep one copy per message id and recipient), and one way only.
    assert {m.dedupe_key for m in delivered} == {
        (clean_env.message_id, r) for r in ("ann@example.com", "bo@example.net")}
    assert all(m.virus is None and m.reason == "clean" for m in delivered)
    assert {key for key, _ in held} == {(virus_env.message_id, "ann@example.com")}
    assert all(i["virus"].startswith("Eicar-Test-Signature") and "virus" in i["categories"]
               for _, i in held)
    outcomes = {e["status"] for e in logged(again, "rescanned") + logged(worker, "rescanned")}
    assert outcomes == {"clean", "virus"}
    assert wait(lambda: scan_rescan_queue([broker.bootstrap], "postwarden").waiting == 0, 15)
    assert again.stop() == 0, again.log()[-2000:]
