"""A restarted worker recovers every table entry from the changelogs, whatever their
batching: Tansu answers ListOffsets(latest) with the base offset of the last batch + 1,
and Faust's recovery stopped there, losing the rest of that batch (streams.app)."""

from __future__ import annotations

import collections
import time
import urllib.error
import urllib.request

from kafka import KafkaProducer

from postwarden.local_services import free_port
from postwarden.records import RoutedMessage
from postwarden.topics import DELIVER, USER_SETTINGS, USERS_CHANGELOG
from postwarden.users import new_command
from tests.delivery_helpers import logged, wait
from tests.kafka_reader import read_topic
from tests.streams.scoring_fixtures import plain_message
from tests.streams.test_policy_submit import start_worker
from tests.streams.test_rescan import envelope, produce_inbound
from tests.conftest import service_env

USERS = [f"user{i}@example.com" for i in range(40)]


def test_a_restarted_worker_recovers_the_last_changelog_batch_whole(broker, spawn, tmp_path):
    # Full batches on the changelogs (the default): several settings changes per batch.
    env = service_env(tmp_path, broker.bootstrap, POSTWARDEN_PRODUCER_LINGER_MS="50")
    first = start_worker(spawn, env, "worker-1")
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], acks="all")
    try:
        for user in USERS:
            cmd = new_command("example", user, "upsert", {"filtering": False})
            producer.send(USER_SETTINGS.name, key=user.encode(), value=cmd.encode())
        producer.flush(30)
    finally:
        producer.close()
    changelog = read_topic(broker.bootstrap, USERS_CHANGELOG.name, lambda r: len(r) >= len(USERS), 60)
    assert len(changelog) == len(USERS)
    assert first.stop() == 0

    # A new worker has only the changelogs to go by.
    second = start_worker(spawn, env, "worker-2")
    message = envelope(USERS)
    produce_inbound(broker.bootstrap, [(message, plain_message())])
    assert wait(lambda: len(read_topic(broker.bootstrap, DELIVER.name, lambda r: False, 1.0)) >= len(USERS),
                60), second.log()[-3000:]
    routed = [RoutedMessage.decode(r.value) for r in read_topic(broker.bootstrap, DELIVER.name,
                                                                lambda r: False, 1.0)]
    reasons = collections.Counter(m.reason for m in routed)
    assert reasons == {"filtering_off": len(USERS)}, reasons


def test_a_worker_is_ready_only_after_its_first_recovery(broker, spawn, tmp_path):
    # Faust's web server answers before the worker has joined its group: a "ready" then
    # let mail reach partitions whose records the starting worker dropped.
    env = service_env(tmp_path, broker.bootstrap)
    health = free_port()
    worker = spawn(["worker"], {**env, "POSTWARDEN_HEALTH_PORT": str(health)}, "worker")
    url = f"http://127.0.0.1:{health}/readyz"
    answers: list[tuple[int, float]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (answers and answers[-1][0] == 200):
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                answers.append((resp.status, time.time()))
        except urllib.error.HTTPError as exc:
            answers.append((exc.code, time.time()))
        except OSError:
            pass  # not listening yet
        time.sleep(0.05)
    assert answers and answers[-1][0] == 200, worker.log()[-2000:]
    assert 503 in {code for code, _ in answers}, answers  # it answered while starting
    ready_logged = [e["ts"] for e in logged(worker, "[^---Recovery]: Worker ready")]
    assert ready_logged and ready_logged[0] <= answers[-1][1], (ready_logged, answers[-3:])
