"""A restarted worker recovers every table entry from the changelogs, whatever their
batching: Tansu answers ListOffsets(latest) with the base offset of the last batch + 1,
and Faust's recovery stopped there, losing the rest of that batch (streams.app)."""

from __future__ import annotations

import collections

from kafka import KafkaProducer

from postwarden.records import RoutedMessage
from postwarden.topics import DELIVER, USER_SETTINGS, USERS_CHANGELOG
from postwarden.users import new_command
from tests.delivery_helpers import wait
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
