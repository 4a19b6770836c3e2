"""The quarantine on a real broker and worker: a user holding more mail than one record could
carry, and no readable held mail on mail.quarantine or the store's changelogs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaProducer

from postwarden.held_mail import HeldMessage
from postwarden.records import Verdict, new_message_id
from postwarden.topics import QUARANTINE_INDEX_CHANGELOG, QUARANTINE_STORE_CHANGELOG
from tests.conftest import wait_http_ok
from tests.kafka_reader import read_topic
from tests.web.stack import KEY_EXAMPLE, Browserless, Stack

pytestmark = pytest.mark.slow

# The worker's largest record is the message size limit + 256 KiB (streams.app): ~260 KiB here.
# An index entry of these messages is ~0.5 KB, so a one-value index would pass it near 500.
MAX_MESSAGE_SIZE = 4096
HELD = 700
USER = "hoarder@example.com"
API = f"/api/v1/tenants/example/users/{USER}/quarantine"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("quarantine"),
              settings={"POSTWARDEN_MAX_MESSAGE_SIZE": str(MAX_MESSAGE_SIZE)})
    try:
        s.start()
        yield s
    finally:
        s.stop()


def hold_many(stack: Stack, recipient: str, n: int) -> list[str]:
    """n spam verdicts for one recipient in one producer session; their ids, oldest first."""
    producer = KafkaProducer(bootstrap_servers=[stack.broker.bootstrap], acks="all", linger_ms=5)
    ids, start = [], time.time()
    try:
        for i in range(n):
            mid = new_message_id()
            raw = (f"From: Promo {i} <promo{i}@shop.example>\r\nTo: {recipient}\r\n"
                   f"Subject: Offer {i:04d} of a long series of offers nobody asked for\r\n"
                   f"Message-ID: <{mid}@shop.example>\r\n\r\nBuy now, offer {i}\r\n").encode()
            v = Verdict(message_id=mid, tenant="example", recipient=recipient,
                        mail_from=f"promo{i}@shop.example", received_at=start + i * 0.001,
                        size=len(raw), spam_score=90.0, category_scores={"spam": 90.0}, categories=["spam"],
                        virus=None, rules=[{"name": "TEST_RULE", "score": 90.0, "description": "a test rule"}],
                        scorer="test", raw=raw)
            producer.send("mail.verdicts", key=recipient.encode(), value=v.encode())
            ids.append(mid)
        producer.flush(60)
    finally:
        producer.close()
    return ids


def listing(stack: Stack, query: str = "") -> tuple[int, dict]:
    return stack.api("GET", API + query)


def wait_total(stack: Stack, want: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    out: dict = {}
    while time.monotonic() < deadline:
        assert stack.workers[0].proc.poll() is None, f"worker died\n{stack.workers[0].log()[-4000:]}"
        status, out = listing(stack, "?limit=1")
        if status == 200 and out["total"] == want:
            return out
        time.sleep(0.5)
    raise AssertionError(f"{out.get('total')} of {want} held\n{stack.workers[0].log()[-4000:]}")


def test_one_user_holds_more_mail_than_one_record_could_carry(stack):
    ids = hold_many(stack, USER, HELD)
    wait_total(stack, HELD, 180)
    newest_first = ids[::-1]
    status, first = listing(stack, "?limit=100")
    assert status == 200 and [e["message_id"] for e in first["entries"]] == newest_first[:100]
    _, deep = listing(stack, "?offset=650&limit=100")
    assert [e["message_id"] for e in deep["entries"]] == newest_first[650:]
    _, found = listing(stack, "?q=offer%200123%20")
    assert found["total"] == 1 and found["entries"][0]["message_id"] == ids[123]
    status, out = stack.api("POST", f"{API}/{ids[5]}/release")
    assert status == 200 and out["status"] == "released", out

    # The index reached the changelog in full: a restarted worker recovers all of it.
    stack.workers[0].stop()
    worker = stack.start_worker(0)
    wait_http_ok(f"http://127.0.0.1:{stack.worker_ports[0]}/readyz", 60, worker)
    wait_total(stack, HELD - 1, 60)
    assert stack.api("POST", f"{API}/{ids[5]}/release")[1]["status"] == "already_released"
    assert "MessageSizeTooLarge" not in stack.logs()


def test_held_mail_is_never_readable_on_the_quarantine_topic_or_changelogs(stack):
    marker = f"PLAIN{uuid.uuid4().hex[:12]}"
    stack.create_user("pia@example.com")
    mid = stack.quarantine("pia@example.com", subject=f"About {marker}", body=f"Body {marker} text",
                           sender=f"{marker.lower()}@shop.example")
    entry = stack.wait_listed("pia@example.com", mid)
    assert marker in entry["subject"] and entry["sender"] == f"{marker.lower()}@shop.example"

    held = [r.value for r in read_topic(stack.broker.bootstrap, "mail.quarantine", lambda r: False, 2)]
    assert any(HeldMessage.decode(v).message_id == mid for v in held)
    for topic in ("mail.quarantine", QUARANTINE_INDEX_CHANGELOG.name, QUARANTINE_STORE_CHANGELOG.name):
        values = [r.value or b"" for r in read_topic(stack.broker.bootstrap, topic, lambda r: False, 2)]
        assert values, topic
        assert not any(marker.encode() in v or marker.lower().encode() in v for v in values), topic

    b = Browserless(stack.url)
    assert b.login("pia@example.com") == 302
    status, _, page = b.request("GET", f"/quarantine/{mid}")
    assert status == 200 and f"About {marker}" in page and f"Body {marker} text" in page
    status, out = stack.api("POST", f"/api/v1/tenants/example/users/pia@example.com/quarantine/{mid}/release",
                            key=KEY_EXAMPLE)
    assert status == 200 and out["status"] == "released"
    released = stack.wait_routed("mail.deliver", mid, "pia@example.com")
    assert marker.encode() in released.raw  # released mail goes downstream as it came
