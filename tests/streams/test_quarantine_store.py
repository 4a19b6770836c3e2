"""The quarantine store over plain dicts: sealed at rest, per-user index, tampering, retention."""

from __future__ import annotations

import logging

import pytest

from postwarden.keyring import Keyring, new_master_key
from postwarden.records import RoutedMessage
from postwarden.sealing import RetiredKeyError, Sealer, TamperedError
from streams.quarantine_store import DAY, NotFound, QuarantineStore

RAW = (b"From: Promo <promo@shop.example>\r\nSubject: =?utf-8?q?Gro=C3=9Fe_Sale?=\r\n\r\n"
       b"SECRET-BODY-TEXT buy now\r\n")


def routed(mid: str, recipient: str = "ann@example.com", tenant: str = "example", raw: bytes = RAW,
           received_at: float = 1000.0) -> RoutedMessage:
    return RoutedMessage(message_id=mid, tenant=tenant, recipient=recipient, mail_from="promo@shop.example",
                         action="quarantine", reason="spam", spam_score=80.0, virus=None,
                         categories=["spam"], rules=[{"name": "R1", "score": 80.0, "description": "d"}],
                         received_at=received_at, raw=raw)


@pytest.fixture
def ring() -> Keyring:
    return Keyring([new_master_key("k1")], "test")


def make(ring: Keyring) -> tuple[QuarantineStore, dict, dict]:
    index, messages = {}, {}
    return QuarantineStore(index, messages, Sealer(ring)), index, messages


def test_stored_messages_are_sealed_and_listed_per_user(ring):
    store, index, messages = make(ring)
    assert store.add(routed("m1"), 14, now=1000.0)
    assert not store.add(routed("m1"), 14, now=1000.0)  # replay of the same record
    store.add(routed("m2", received_at=2000.0), 14, now=2000.0)
    store.add(routed("m3", recipient="bo@example.com"), 14, now=1000.0)
    # Nothing readable at rest: neither body, subject nor sender.
    at_rest = b"".join(index.values()) + b"".join(messages.values())
    for secret in (b"SECRET-BODY-TEXT", b"Sale", b"promo@shop.example"):
        assert secret not in at_rest
    held = store.held("ann@example.com")
    assert [e.message_id for e in held] == ["m2", "m1"]
    assert held[0].subject == "Große Sale" and held[0].sender == "promo@shop.example"
    assert held[0].size == len(RAW) and held[0].rules[0]["name"] == "R1"
    assert [e.message_id for e in store.held("ann@example.com", "große")] == ["m2", "m1"]
    assert store.held("ann@example.com", "nothing like this") == []
    assert store.message("ann@example.com", "m1")[1] == RAW
    with pytest.raises(NotFound):
        store.message("bo@example.com", "m1")  # another user's id


def test_a_ciphertext_moved_to_another_user_fails_and_is_reported(ring, caplog):
    store, index, messages = make(ring)
    store.add(routed("m1"), 14, now=1000.0)
    store.add(routed("m9", recipient="bo@example.com"), 14, now=1000.0)
    messages[b"bo@example.com\0m9"] = messages[b"ann@example.com\0m1"]
    with caplog.at_level(logging.ERROR), pytest.raises(TamperedError):
        store.message("bo@example.com", "m9")
    line = [r for r in caplog.records if "failed authentication" in r.getMessage()]
    assert line and line[0].message_id == "m9" and "bo@" not in str(line[0].__dict__)


def test_a_flipped_bit_is_detected(ring):
    store, _, messages = make(ring)
    store.add(routed("m1"), 14, now=1000.0)
    import msgpack
    sealed = msgpack.unpackb(messages[b"ann@example.com\0m1"])
    sealed["c"] = bytes([sealed["c"][0] ^ 1]) + sealed["c"][1:]
    messages[b"ann@example.com\0m1"] = msgpack.packb(sealed)
    with pytest.raises(TamperedError):
        store.message("ann@example.com", "m1")


def test_tenant_keys_differ_and_rotation_keeps_old_entries_readable(ring):
    sealer = Sealer(ring)
    sealed = sealer.seal("example", "ann@example.com", "m1", "body", b"x")
    with pytest.raises(TamperedError):
        sealer.open("other", "ann@example.com", "m1", "body", sealed)
    with pytest.raises(TamperedError):
        sealer.open("example", "ann@example.com", "m1", "index", sealed)
    rotated = Keyring([new_master_key("k2"), new_master_key("k1")], "test")
    rotated._keys["k1"] = ring._keys["k1"]
    new_sealer = Sealer(rotated)
    assert new_sealer.open("example", "ann@example.com", "m1", "body", sealed) == b"x"
    assert new_sealer.seal("example", "a@example.com", "m", "body", b"y")["k"] == "k2"
    with pytest.raises(RetiredKeyError):
        Sealer(Keyring([new_master_key("k3")], "test")).open("example", "ann@example.com", "m1", "body", sealed)


def test_retention_removes_entries_on_a_controlled_clock(ring):
    store, index, messages = make(ring)
    store.add(routed("old"), 14, now=1000.0)
    store.add(routed("new"), 14, now=1000.0 + 5 * DAY)
    assert store.due(1000.0 + 14 * DAY - 1) == []
    due = store.due(1000.0 + 14 * DAY)
    assert due == [("example", "ann@example.com", "old")]
    assert not store.expire("ann@example.com", "new", 1000.0 + 14 * DAY)  # not due yet
    assert store.expire("ann@example.com", "old", 1000.0 + 14 * DAY)
    assert [e.message_id for e in store.held("ann@example.com")] == ["new"]
    assert b"ann@example.com\0old" not in messages
    store.expire("ann@example.com", "new", 1000.0 + 19 * DAY)
    assert index == {} and messages == {}


def test_closing_destroys_content_but_remembers_the_outcome(ring):
    store, _, messages = make(ring)
    store.add(routed("m1"), 14, now=1000.0)
    store.close("ann@example.com", "m1", "released")
    assert store.find("ann@example.com", "m1").status == "released"
    assert store.held("ann@example.com") == [] and messages == {}
    with pytest.raises(NotFound):
        store.message("ann@example.com", "m1")
    assert store.purge("ann@example.com") == 1 and store.find("ann@example.com", "m1") is None
