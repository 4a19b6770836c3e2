from kafka import KafkaAdminClient

from postwarden.local_services import Tansu
from postwarden.topics import ALL_TOPICS, create_topics


def test_declarations_are_complete_and_unique():
    names = [t.name for t in ALL_TOPICS]
    assert len(names) == len(set(names))
    assert set(names) == {"mail.inbound", "mail.verdicts", "mail.deliver", "mail.quarantine",
                          "mail.notify", "mail.events", "mail.stats", "mail.user-settings",
                          "mail.quarantine-actions", "mail.users-changelog",
                          "mail.quarantine-index-changelog", "mail.quarantine-store-changelog",
                          "mail.deliver.retry.1", "mail.deliver.retry.2", "mail.deliver.retry.3",
                          "mail.deliver.retry.4", "mail.delivered", "mail.digest.state", "mail.rescan"}
    for t in ALL_TOPICS:
        assert t.retention_ms > 0 and t.key and t.value
        assert t.config()["retention.ms"] == str(t.retention_ms)


def test_create_is_idempotent_on_a_real_broker(tmp_path):
    tansu = Tansu(log_path=tmp_path / "tansu.log").start()
    try:
        first = create_topics([tansu.bootstrap], partitions=3)
        assert set(first.values()) == {"created"}
        second = create_topics([tansu.bootstrap], partitions=3)
        assert set(second.values()) == {"exists"}
        admin = KafkaAdminClient(bootstrap_servers=[tansu.bootstrap])
        try:
            described = admin.describe_topics([t.name for t in ALL_TOPICS])
        finally:
            admin.close()
        assert {d["name"]: len(d["partitions"]) for d in described} == {t.name: 3 for t in ALL_TOPICS}
    finally:
        tansu.stop()


def test_unreachable_broker_fails_with_a_clear_error():
    import pytest
    from kafka.errors import KafkaError

    from postwarden.local_services import free_port

    with pytest.raises(KafkaError, match="cannot reach the Kafka cluster"):
        create_topics([f"127.0.0.1:{free_port()}"], partitions=1, timeout=2)
