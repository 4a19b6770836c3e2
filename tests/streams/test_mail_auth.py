"""SPF, DKIM and DMARC against a real authoritative DNS server on loopback."""

from __future__ import annotations

import asyncio
import base64
import subprocess

import dkim
import pytest

from postwarden.config import load_settings

from postwarden.records import Envelope
from streams.dns_resolver import CachingResolver, DnsTempError, parse_servers
from streams.mail_auth import authenticate, check_dkim, check_spf, organizational_domain
from streams.scoring_engine import ScoringEngine
from tests.streams.scoring_fixtures import ZoneServer, plain_message


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory) -> tuple[bytes, str]:
    d = tmp_path_factory.mktemp("dkim")
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(d / "k.pem"), "2048"],
                   check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(d / "k.pem"), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return (d / "k.pem").read_bytes(), base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def zone(dkim_key):
    records = {
        ("example.org", "TXT"): ["v=spf1 ip4:192.0.2.0/24 include:_spf.partner.test -all"],
        ("_spf.partner.test", "TXT"): ["v=spf1 ip6:2001:db8::/32 a:relay.partner.test ~all"],
        ("relay.partner.test", "A"): ["198.51.100.9"],
        ("soft.test", "TXT"): ["v=spf1 mx ~all"],
        ("soft.test", "MX"): ["mx.soft.test"],
        ("mx.soft.test", "A"): ["203.0.113.5"],
        ("redirected.test", "TXT"): ["v=spf1 redirect=example.org"],
        ("loop.test", "TXT"): ["v=spf1 include:loop.test -all"],
        ("two.test", "TXT"): ["v=spf1 -all", "v=spf1 +all"],
        ("macro.test", "TXT"): ["v=spf1 exists:%{ir}._ip.macro.test -all"],
        ("7.2.0.192._ip.macro.test", "A"): ["127.0.0.2"],
        ("sel._domainkey.example.org", "TXT"): [f"v=DKIM1; k=rsa; p={dkim_key[1]}"],
        ("_dmarc.example.org", "TXT"): ["v=DMARC1; p=reject; adkim=r; aspf=r"],
        ("_dmarc.bank.test", "TXT"): ["v=DMARC1; p=quarantine"],
        ("bank.test", "TXT"): ["v=spf1 ip4:203.0.113.0/24 -all"],
        ("timeout.slow.test", "TXT"): ["v=spf1 +all"],
    }
    with ZoneServer(records) as server:
        yield server


@pytest.fixture
def resolver(zone):
    return CachingResolver(parse_servers(zone.spec), timeout=1.0)


@pytest.mark.parametrize("ip,sender,expected", [
    ("192.0.2.7", "a@example.org", "pass"),
    ("203.0.113.1", "a@example.org", "fail"),
    ("2001:db8::25", "a@example.org", "pass"),            # through include, ip6
    ("198.51.100.9", "a@example.org", "pass"),            # through include, a:
    ("203.0.113.5", "a@soft.test", "pass"),               # mx
    ("192.0.2.99", "a@soft.test", "softfail"),
    ("192.0.2.7", "a@redirected.test", "pass"),
    ("192.0.2.7", "a@loop.test", "permerror"),
    ("192.0.2.7", "a@two.test", "permerror"),
    ("192.0.2.7", "a@macro.test", "pass"),
    ("192.0.2.8", "a@macro.test", "fail"),
    ("192.0.2.7", "a@nothing-here.test", "none"),
])
async def test_spf(resolver, ip, sender, expected):
    assert await check_spf(resolver, ip, sender, "helo.test") == expected


async def test_spf_uses_helo_for_null_sender(resolver):
    assert await check_spf(resolver, "192.0.2.7", "", "example.org") == "pass"


async def test_spf_timeout_is_temperror_and_bounded(zone):
    slow = CachingResolver(parse_servers(zone.spec), timeout=0.3)
    started = asyncio.get_running_loop().time()
    assert await check_spf(slow, "192.0.2.7", "a@timeout.slow.test", "h") == "temperror"
    assert asyncio.get_running_loop().time() - started < 2


async def test_resolver_caches_answers_and_negatives(zone, resolver):
    before = len(zone.resolver.queries)
    for _ in range(3):
        await resolver.txt("example.org")
        await resolver.txt("no-such-name.test")
    assert len(zone.resolver.queries) - before == 2
    assert resolver.queries == 2


async def test_resolver_reports_unreachable_server_as_temporary():
    from postwarden.local_services import free_port
    dead = CachingResolver([("127.0.0.1", free_port())], timeout=0.3)
    with pytest.raises(DnsTempError):
        await dead.txt("example.org")


def _signed(key_pem: bytes, raw: bytes, domain: bytes = b"example.org") -> bytes:
    sig = dkim.sign(raw, b"sel", domain, key_pem, include_headers=[b"from", b"to", b"subject", b"date"])
    return sig + raw


async def test_dkim_pass_and_tampered_fail(resolver, dkim_key):
    raw = plain_message().replace(b"\n", b"\r\n")
    signed = _signed(dkim_key[0], raw)
    assert await check_dkim(resolver, signed) == ("pass", ["example.org"])
    tampered = signed.replace(b"see you at lunch", b"send me money")
    assert (await check_dkim(resolver, tampered))[0] == "fail"
    assert (await check_dkim(resolver, raw))[0] == "none"


async def test_dmarc_end_to_end(resolver, dkim_key):
    raw = plain_message().replace(b"\n", b"\r\n")
    aligned = await authenticate(resolver, _signed(dkim_key[0], raw), "Alice <alice@example.org>",
                                 "203.0.113.1", "bounce@other.test", "h")
    assert (aligned.spf, aligned.dkim, aligned.dmarc, aligned.dmarc_policy) == ("none", "pass", "pass", "reject")
    forged = await authenticate(resolver, raw, "Bank <alerts@bank.test>", "192.0.2.7",
                                "x@example.org", "h")
    assert (forged.spf, forged.dkim, forged.dmarc, forged.dmarc_policy) == ("pass", "none", "fail", "quarantine")
    by_spf = await authenticate(resolver, raw, "alerts@bank.test", "203.0.113.4", "bounces@mail.bank.test", "h")
    assert by_spf.dmarc == "fail"  # mail.bank.test has no SPF record of its own
    by_spf = await authenticate(resolver, raw, "alerts@bank.test", "203.0.113.4", "bounces@bank.test", "h")
    assert by_spf.dmarc == "pass"


def test_organizational_domain():
    assert organizational_domain("mail.news.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.example.org") == "example.org"


async def test_engine_applies_auth_rules(zone):
    engine = ScoringEngine.from_settings(load_settings({"POSTWARDEN_DNS_SERVERS": zone.spec, "POSTWARDEN_DNS_TIMEOUT": "1"}))
    env = Envelope("m-2", "t-1", "x@example.org", ["bob@example.net"], "192.0.2.7", "h", True, 0.0, 1, "n")
    result = await engine.score(plain_message(sender="Bank <alerts@bank.test>"), env)
    names = {h.name for h in result.rules}
    assert {"SPF_PASS", "DMARC_FAIL"} <= names
    assert result.category_scores["phishing"] > 0


async def test_engine_without_dns_skips_auth():
    engine = ScoringEngine.from_settings(load_settings({}))
    env = Envelope("m-3", "t-1", "x@example.org", ["b@example.net"], "192.0.2.7", "h", True, 0.0, 1, "n")
    result = await engine.score(plain_message(), env)
    assert not {h.name for h in result.rules} & {"SPF_PASS", "SPF_FAIL", "DMARC_FAIL", "DKIM_VALID"}
