import msgpack
import pytest

from postwarden.records import Envelope, RecordError, StatsEvent, Verdict, new_message_id


def envelope(**kw):
    base = dict(message_id=new_message_id(), tenant="example", mail_from="a@x.example",
                rcpt_tos=["b@example.com", "c@example.com"], client_ip="192.0.2.1",
                helo="mx.x.example", tls=False, received_at=1.5, size=10, ingest_node="n1")
    base.update(kw)
    return Envelope(**base)


def test_envelope_round_trips_through_headers_in_both_shapes():
    env = envelope()
    headers = env.to_headers()
    assert Envelope.from_headers(headers) == env
    assert Envelope.from_headers(dict(headers)) == env
    assert dict(headers)["pw-envelope-version"] == b"1"


def test_unknown_version_and_garbage_are_refused():
    payload = msgpack.packb({"v": 99, "tenant": "t"})
    with pytest.raises(RecordError, match="unsupported version 99"):
        StatsEvent.decode(payload)
    with pytest.raises(RecordError):
        Verdict.decode(b"\xc1not msgpack")
    with pytest.raises(RecordError, match="without an envelope"):
        Envelope.from_headers([("other", b"x")])


def test_verdict_keeps_raw_bytes_exactly():
    raw = bytes(range(256)) * 3
    v = Verdict(message_id="m", tenant="t", recipient="r@example.com", mail_from="", received_at=1.0,
                size=len(raw), spam_score=12.5, category_scores={"spam": 12.5}, categories=[],
                virus=None, rules=[{"name": "R", "score": 1.0, "description": ""}], scorer="s", raw=raw)
    assert Verdict.decode(v.encode()) == v


def test_message_ids_are_unique_and_time_ordered():
    ids = [new_message_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 for i in ids)
    assert ids[0][:12] <= ids[-1][:12]


def test_stats_event_has_no_personal_fields():
    names = set(StatsEvent.__dataclass_fields__)
    assert not names & {"message_id", "recipient", "mail_from", "client_ip", "subject", "raw", "helo"}
