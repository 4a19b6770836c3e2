"""Against a real clamd started with the EICAR test signature (see scoring_fixtures)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from postwarden.local_services import free_port
from streams.clamd_service import ClamdServer
from postwarden.records import Envelope
from streams.scoring_engine import SCAN_UNAVAILABLE, ScoringEngine
from streams.virus_scanner import ClamdAddress, ClamdScanner, parse_reply
from tests.streams.archive_fixtures import seven_zip
from tests.streams.scoring_fixtures import (
    EICAR, eicar_base64_message, plain_message, with_attachment, zip_bytes,
)


def envelope() -> Envelope:
    return Envelope("m-1", "t-1", "alice@example.org", ["bob@example.net"], "192.0.2.1",
                    "mail.example.org", True, 1725357600.0, 100, "node-1")


async def test_tcp_and_unix_socket(clamd):
    for address in (clamd.address, clamd.unix_address):
        scanner = ClamdScanner(ClamdAddress.parse(address))
        assert await scanner.ping()
        assert (await scanner.scan(b"just text")).status == "clean"
        found = await scanner.scan(EICAR)
        assert found.status == "infected" and found.signature.startswith("Eicar-Test-Signature")


@pytest.mark.parametrize("raw", [
    pytest.param(plain_message(body=EICAR.decode() + "\n"), id="plain-body"),
    pytest.param(with_attachment(zip_bytes({"readme.txt": EICAR}), "docs.zip"), id="zipped"),
    pytest.param(eicar_base64_message(), id="base64-attachment"),
    # ClamAV unpacks 7z itself; the built-in attachment policy only judges types and bombs.
    pytest.param(with_attachment(seven_zip({"readme.txt": EICAR}), "docs.7z"), id="7z"),
])
async def test_engine_finds_eicar(clamd, raw):
    engine = ScoringEngine(scanner=ClamdScanner(ClamdAddress.parse(clamd.address)))
    result = await engine.score(raw, envelope())
    assert result.virus and result.virus.startswith("Eicar-Test-Signature")
    assert result.verdict == "virus" and "virus" in result.categories
    assert any(h.name == "VIRUS_FOUND" for h in result.rules)


async def test_clean_mail_is_scanned_and_clean(clamd):
    engine = ScoringEngine(scanner=ClamdScanner(ClamdAddress.parse(clamd.address)))
    result = await engine.score(plain_message(), envelope())
    assert result.virus is None and "unscanned" not in result.categories and result.verdict == "clean"


async def test_one_connection_serves_many_scans(clamd):
    scanner = ClamdScanner(ClamdAddress.parse(clamd.address))
    # Empty, one chunk, and several 64 KB chunks with the signature in the last.
    results = [await scanner.scan(raw) for raw in (b"a", EICAR, b"", b"x" * 200_000 + EICAR, b"c")]
    assert [r.status for r in results] == ["clean", "infected", "clean", "infected", "clean"]
    [session] = scanner._idle
    assert session.requests == 5


async def test_restarted_daemon_costs_no_failed_scan(tmp_path):
    server = ClamdServer(tmp_path / "clamd").start()
    try:
        scanner = ClamdScanner(ClamdAddress.parse(server.address), timeout=5, connect_timeout=1)
        assert (await scanner.scan(b"before")).status == "clean"
        [stale] = scanner._idle
        server.stop()
        server.start()
        # The pooled connection died with the old daemon: the scan moves to a new one.
        assert (await scanner.scan(EICAR)).status == "infected"
        assert scanner._idle and scanner._idle[0] is not stale
        server.stop()
        down = await scanner.scan(b"while down")
        assert down.status == "error" and not scanner._idle
    finally:
        server.stop()


async def test_daemon_down_holds_the_message(caplog):
    port = free_port()  # nothing listens here
    engine = ScoringEngine(scanner=ClamdScanner(ClamdAddress.parse(f"tcp://127.0.0.1:{port}"),
                                                timeout=2, connect_timeout=1))
    result = await engine.score(plain_message(), envelope())
    assert result.virus == SCAN_UNAVAILABLE and "scan_failed" in result.categories
    assert result.verdict == "virus"
    [record] = [r for r in caplog.records if r.name == "streams.scoring_engine"]
    assert record.message_id == "m-1" and record.tenant == "t-1"
    assert "alice@example.org" not in caplog.text and "192.0.2.1" not in caplog.text


async def test_daemon_that_never_answers_times_out():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        scanner = ClamdScanner(ClamdAddress.parse(f"tcp://127.0.0.1:{port}"), timeout=0.5)
        started = asyncio.get_running_loop().time()
        result = await scanner.scan(b"x" * 1000)
        assert result.status == "error"
        assert asyncio.get_running_loop().time() - started < 3


def test_reply_parsing_and_addresses():
    assert parse_reply("stream: OK").status == "clean"
    assert parse_reply("stream: Win.Test.EICAR_HDB-1 FOUND").signature == "Win.Test.EICAR_HDB-1"
    assert parse_reply("INSTREAM size limit exceeded. ERROR").status == "error"
    assert ClamdAddress.parse("unix:///run/clamd.sock").path == "/run/clamd.sock"
    with pytest.raises(ValueError):
        ClamdAddress.parse("127.0.0.1:3310")


async def test_the_workers_scanner_keeps_a_connection_per_concurrent_scan(clamd, monkeypatch):
    from postwarden.config import Settings

    engine = ScoringEngine.from_settings(Settings(clamd_address=clamd.unix_address, score_concurrency=6))
    opened = []
    real_open = ClamdScanner._open

    async def counting_open(self):
        opened.append(1)
        return await real_open(self)

    monkeypatch.setattr(ClamdScanner, "_open", counting_open)
    for _ in range(3):  # as the score agent's six actors do, round after round
        results = await asyncio.gather(*(engine.scanner.scan(plain_message()) for _ in range(6)))
        assert {r.status for r in results} == {"clean"}
    assert len(opened) == 6  # the first round's connections serve the later rounds


async def test_a_cancelled_scoring_leaves_no_scan_running(tmp_path, monkeypatch):
    # The scan starts before the content is judged: an actor cancelled meanwhile
    # (rebalance, stop) must not leave it behind. This clamd stand-in never answers.
    async def silent(reader, writer):
        await reader.read()

    path = tmp_path / "silent.sock"
    server = await asyncio.start_unix_server(silent, str(path))
    engine = ScoringEngine(scanner=ClamdScanner(ClamdAddress(path=str(path)), timeout=60))
    authenticating = asyncio.Event()

    async def slow_auth(*args):
        authenticating.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(engine, "_authenticate", slow_auth)
    before = asyncio.all_tasks()
    scoring = asyncio.ensure_future(engine.score(plain_message(), envelope()))
    await asyncio.wait_for(authenticating.wait(), 10)
    scans = {t for t in asyncio.all_tasks() - before if "_scan" in repr(t.get_coro())}
    scoring.cancel()
    with pytest.raises(asyncio.CancelledError):
        await scoring
    await asyncio.wait(scans, timeout=5)
    server.close()
    assert len(scans) == 1 and all(t.cancelled() for t in scans)
