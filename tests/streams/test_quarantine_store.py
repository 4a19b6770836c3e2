"""The quarantine store over plain dicts: sealed at rest, bounded per-user index, tampering, retention."""

from __future__ import annotations

import logging

import msgpack
import pytest

from postwarden.held_mail import INDEX_MAX_BYTES, decode_held, seal_held
from postwarden.keyring import Keyring, new_master_key
from postwarden.records import RecordError, RoutedMessage
from postwarden.sealing import RetiredKeyError, Sealer, TamperedError
from streams.quarantine_store import DAY, MAX_VALUE_BYTES, PAGE_ROWS, NotFound, QuarantineStore

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


class Store(QuarantineStore):
    """The store fed as the worker feeds it: with records the policy agent sealed."""

    def __init__(self, index: dict, messages: dict, sealer: Sealer) -> None:
        super().__init__(index, messages, sealer)
        self.sealer = sealer

    def hold(self, routed_message: RoutedMessage, retention_days: int, now: float) -> bool:
        return self.add(seal_held(self.sealer, routed_message), retention_days, now)


def make(ring: Keyring) -> tuple[Store, dict, dict]:
    index, messages = {}, {}
    return Store(index, messages, Sealer(ring)), index, messages


def held_ids(store: QuarantineStore, recipient: str, query: str = "") -> list[str]:
    return [e.message_id for e in store.listing(recipient, query, 0, 10**6)[1]]


def test_stored_messages_are_sealed_and_listed_per_user(ring):
    store, index, messages = make(ring)
    assert store.hold(routed("m1"), 14, now=1000.0)
    assert not store.hold(routed("m1"), 14, now=1000.0)  # replay of the same record
    store.hold(routed("m2", received_at=2000.0), 14, now=2000.0)
    store.hold(routed("m3", recipient="bo@example.com"), 14, now=1000.0)
    # Nothing readable at rest: neither body, subject nor sender.
    at_rest = b"".join(index.values()) + b"".join(messages.values())
    for secret in (b"SECRET-BODY-TEXT", b"Sale", b"promo@shop.example"):
        assert secret not in at_rest
    total, held = store.listing("ann@example.com")
    assert total == 2 and [e.message_id for e in held] == ["m2", "m1"]
    assert held[0].subject == "Große Sale" and held[0].sender == "promo@shop.example"
    assert held[0].size == len(RAW) and held[0].rules[0]["name"] == "R1"
    assert held_ids(store, "ann@example.com", "große") == ["m2", "m1"]
    assert store.listing("ann@example.com", "nothing like this") == (0, [])
    assert store.message("ann@example.com", "m1")[1] == RAW
    with pytest.raises(NotFound):
        store.message("bo@example.com", "m1")  # another user's id


def test_a_ciphertext_moved_to_another_user_fails_and_is_reported(ring, caplog):
    store, index, messages = make(ring)
    store.hold(routed("m1"), 14, now=1000.0)
    store.hold(routed("m9", recipient="bo@example.com"), 14, now=1000.0)
    messages[b"bo@example.com\0m9"] = messages[b"ann@example.com\0m1"]
    with caplog.at_level(logging.ERROR), pytest.raises(TamperedError):
        store.message("bo@example.com", "m9")
    line = [r for r in caplog.records if "failed authentication" in r.getMessage()]
    assert line and line[0].message_id == "m9" and "bo@" not in str(line[0].__dict__)


def test_a_flipped_bit_is_detected(ring):
    store, _, messages = make(ring)
    store.hold(routed("m1"), 14, now=1000.0)
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
    store.hold(routed("old"), 14, now=1000.0)
    store.hold(routed("new"), 14, now=1000.0 + 5 * DAY)
    assert list(store.due(1000.0 + 14 * DAY - 1)) == []
    due = list(store.due(1000.0 + 14 * DAY))
    assert due == [("example", "ann@example.com", "old")]
    assert not store.expire("ann@example.com", "new", 1000.0 + 14 * DAY)  # not due yet
    assert store.expire("ann@example.com", "old", 1000.0 + 14 * DAY)
    assert held_ids(store, "ann@example.com") == ["new"]
    assert b"ann@example.com\0old" not in messages
    store.expire("ann@example.com", "new", 1000.0 + 19 * DAY)
    assert index == {} and messages == {}


def test_closing_destroys_content_but_remembers_the_outcome(ring):
    store, _, messages = make(ring)
    store.hold(routed("m1"), 14, now=1000.0)
    store.close("ann@example.com", "m1", "released")
    assert store.find("ann@example.com", "m1").status == "released"
    assert store.listing("ann@example.com") == (0, []) and messages == {}
    with pytest.raises(NotFound):
        store.message("ann@example.com", "m1")
    assert store.purge("ann@example.com") == 1 and store.find("ann@example.com", "m1") is None


class CountingDict(dict):
    """Counts writes and remembers the largest value written (what the changelog would carry)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes, self.largest = 0, 0

    def __setitem__(self, key, value) -> None:
        self.writes += 1
        self.largest = max(self.largest, len(value))
        super().__setitem__(key, value)


def hostile(mid: str, received_at: float) -> RoutedMessage:
    """A message whose index fields are as large as they can get."""
    subject = "Sübject " + "€" * 2000
    raw = (f"From: {'Ñame' * 300} <x@shop.example>\r\nSubject: {subject}\r\n\r\nbody\r\n").encode()
    return RoutedMessage(message_id=mid, tenant="example", recipient="big@example.com",
                         mail_from="s" * 5000 + "@shop.example", action="quarantine", reason="r" * 999,
                         spam_score=90.0, virus=None, categories=["c" * 99] * 50,
                         rules=[{"name": "N" * 500, "score": 1.0, "description": "d" * 5000}] * 80,
                         received_at=received_at, raw=raw)


def test_index_fields_are_clipped_to_their_byte_budget(ring):
    sealer = Sealer(ring)
    held = seal_held(sealer, hostile("m" * 32, 1.0))
    meta = sealer.open("example", "big@example.com", "m" * 32, "index", msgpack.unpackb(held.index))
    assert len(meta) <= INDEX_MAX_BYTES
    fields = msgpack.unpackb(meta)
    assert fields["subject"].startswith("Sübject €") and len(fields["rules"]) == 10


def test_one_user_with_thousands_of_held_messages_stays_within_bounded_values(ring):
    index, messages = CountingDict(), {}
    store = Store(index, messages, Sealer(ring))
    n = 1500
    for i in range(n):
        before = index.writes
        assert store.hold(hostile(f"m{i:05d}", 1000.0 + i), 14, now=1000.0 + i)
        assert index.writes - before <= 4  # directory twice, page, locator: whatever the user holds
    # The old layout kept all of this in one value: far past a broker's 1 MB record limit.
    assert sum(len(v) for v in index.values()) > 5 * 1024 * 1024
    assert index.largest <= MAX_VALUE_BYTES < 1024 * 1024
    assert store.count("big@example.com") == n

    total, first = store.listing("big@example.com", offset=0, limit=25)
    assert total == n and [e.message_id for e in first] == [f"m{i:05d}" for i in range(n - 1, n - 26, -1)]
    _, middle = store.listing("big@example.com", offset=1000, limit=30)
    assert [e.message_id for e in middle] == [f"m{i:05d}" for i in range(n - 1001, n - 1031, -1)]
    assert store.listing("big@example.com", offset=n, limit=25) == (n, [])
    assert store.listing("big@example.com", "€€€", 10, 5)[0] == n

    assert store.find("big@example.com", "m00007").status == "held"
    store.close("big@example.com", "m00007", "released")
    store.close("big@example.com", "m01200", "deleted")
    assert store.find("big@example.com", "m00007").status == "released"
    assert store.count("big@example.com") == n - 2
    assert "m01200" not in [e.message_id for e in store.listing("big@example.com", offset=990, limit=20)[1]]
    assert store.message("big@example.com", "m01499")[1].startswith(b"From: ")

    # Retention: only the first pages are due, and expiring touches O(1) values each.
    due = list(store.due(1000.0 + 14 * DAY + 99.5, ["big@example.com"]))
    assert [d[2] for d in due] == [f"m{i:05d}" for i in range(100)]
    for _, recipient, mid in due:
        before = index.writes
        assert store.expire(recipient, mid, 1000.0 + 14 * DAY + 99.5)
        assert index.writes - before <= 3
    assert store.count("big@example.com") == n - 101  # m00007 was closed before it expired
    assert store.find("big@example.com", "m00007") is None
    assert store.listing("big@example.com", offset=n - 102, limit=5)[1][0].message_id == "m00100"
    assert index.largest <= MAX_VALUE_BYTES

    assert store.purge("big@example.com") == n - 100
    assert index == {} and messages == {}


def test_pages_emptied_in_the_middle_are_skipped_and_a_shorter_retention_is_still_swept(ring):
    store, index, _ = make(ring)
    for i in range(PAGE_ROWS * 3):
        store.hold(routed(f"m{i:03d}", received_at=float(i)), 14, now=float(i))
    for i in range(PAGE_ROWS, 2 * PAGE_ROWS):
        assert store.expire("ann@example.com", f"m{i:03d}", now=10**9)  # a whole middle page
    assert held_ids(store, "ann@example.com") == [f"m{i:03d}" for i in
                                                   [*range(3 * PAGE_ROWS - 1, 2 * PAGE_ROWS - 1, -1),
                                                    *range(PAGE_ROWS - 1, -1, -1)]]
    # The tenant shortens retention: a newer entry now expires before older ones.
    store.hold(routed("short", received_at=500.0), 1, now=500.0)
    assert [d[2] for d in store.due(500.0 + DAY)] == ["short"]
    for i in range(PAGE_ROWS * 3):
        store.expire("ann@example.com", f"m{i:03d}", now=10**9)
    store.expire("ann@example.com", "short", now=10**9)
    assert index == {}  # an empty user leaves nothing behind, directory included


def test_an_index_of_the_earlier_one_value_layout_is_read_and_rewritten_into_pages(ring):
    store, index, messages = make(ring)
    for i in range(60):
        store.hold(routed(f"m{i:02d}", received_at=float(i)), 14, now=float(i))
    rows = [row for page in range(3) for row in msgpack.unpackb(index[f"ann@example.com\0p{page}".encode()])]
    index.clear()
    index[b"ann@example.com"] = msgpack.packb(rows)  # what earlier versions stored
    assert store.count("ann@example.com") == 60
    assert held_ids(store, "ann@example.com")[:2] == ["m59", "m58"]
    assert store.message("ann@example.com", "m10")[1] == RAW
    store.close("ann@example.com", "m10", "deleted")  # the first change rewrites it
    assert isinstance(msgpack.unpackb(index[b"ann@example.com"]), dict)
    assert store.find("ann@example.com", "m10").status == "deleted" and store.count("ann@example.com") == 59
    assert store.listing("ann@example.com", offset=58, limit=5)[1][0].message_id == "m00"
    assert store.add(seal_held(Sealer(ring), routed("m60", received_at=60.0)), 14, now=60.0)
    assert [d[2] for d in store.due(14 * DAY + 1.5)] == ["m00", "m01"]
    assert store.purge("ann@example.com") == 61 and index == {} and messages == {}


class Crash(Exception):
    pass


class CrashingDict(dict):
    """Fails after `budget` writes or deletes, like a worker killed in the middle of a change."""

    def __init__(self, data: dict, budget: int) -> None:
        super().__init__(data)
        self.budget = budget

    def _spend(self) -> None:
        if self.budget == 0:
            raise Crash
        self.budget -= 1

    def __setitem__(self, key, value) -> None:
        self._spend()
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self._spend()
        super().__delitem__(key)


def test_a_change_interrupted_after_any_write_is_finished_by_the_next_one(ring):
    sealer = Sealer(ring)
    base_index, base_messages = {}, {}
    seed = Store(base_index, base_messages, sealer)
    for i in range(PAGE_ROWS):  # a full page: the next message opens a new one
        seed.hold(routed(f"m{i:02d}", received_at=float(i)), 14, now=float(i))
    seed.close("ann@example.com", "m03", "released")
    new = seal_held(sealer, routed("new", received_at=100.0))
    changes = {
        "add": lambda st: st.add(new, 14, now=100.0),
        "close": lambda st: st.close("ann@example.com", "m05", "deleted"),
        "expire": lambda st: st.expire("ann@example.com", "m00", now=10**9),
    }
    for name, change in changes.items():
        expected = Store(dict(base_index), dict(base_messages), sealer)
        change(expected)
        for budget in range(6):
            index = CrashingDict(base_index, budget)
            store = Store(index, dict(base_messages), sealer)
            try:
                change(store)
            except Crash:
                pass
            index.budget = -1
            # Whatever the mailbox does next for this user settles the change first; the
            # interrupted command itself is replayed and changes nothing more.
            store.settle("ann@example.com")
            change(store)
            assert dict(index) == expected._index, (name, budget)
            assert store._messages == expected._messages, (name, budget)
            assert store.listing("ann@example.com")[0] == expected.count("ann@example.com")


def test_held_mail_written_in_clear_before_an_upgrade_is_sealed_on_arrival(ring):
    store, index, messages = make(ring)
    sealer = Sealer(ring)
    assert store.add(decode_held(sealer, routed("old").encode()), 14, now=1000.0)  # earlier format
    assert store.add(decode_held(sealer, seal_held(sealer, routed("new")).encode()), 14, now=1000.0)
    assert store.message("ann@example.com", "old")[1] == RAW
    assert b"SECRET-BODY-TEXT" not in b"".join(messages.values())
    with pytest.raises(RecordError):
        decode_held(sealer, b"\x93not a record")
