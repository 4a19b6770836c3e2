from ingest.uncertain_attempts import UncertainAttempts, fingerprint


def test_fingerprint_covers_envelope_and_content():
    base = fingerprint("t", "a@x", ["b@y"], b"body")
    assert base == fingerprint("t", "a@x", ["b@y"], b"body")
    others = {fingerprint("u", "a@x", ["b@y"], b"body"), fingerprint("t", "c@x", ["b@y"], b"body"),
              fingerprint("t", "a@x", ["b@y", "c@y"], b"body"), fingerprint("t", "a@x", ["b@y"], b"bod")}
    assert base not in others and len(others) == 4


def test_ids_are_forgotten_after_their_time_and_beyond_capacity():
    now = [0.0]
    memory = UncertainAttempts(keep_seconds=10, capacity=2, clock=lambda: now[0])
    assert not memory
    memory.remember(b"a", "id-a")
    assert memory and memory.message_id(b"a") == "id-a" and memory.message_id(b"x") is None
    now[0] = 11
    assert memory.message_id(b"a") is None and not memory
    memory.remember(b"b", "id-b")
    memory.remember(b"c", "id-c")
    memory.remember(b"d", "id-d")
    assert memory.message_id(b"b") is None
    assert (memory.message_id(b"c"), memory.message_id(b"d")) == ("id-c", "id-d")
