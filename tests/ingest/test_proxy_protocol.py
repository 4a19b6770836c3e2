"""PROXY protocol v1/v2: the recorded client IP, relay checks and limits use the real peer."""

import asyncio
import ipaddress
import struct

from postwarden.records import Envelope
from tests.ingest.conftest import TENANT, tenants_yaml
from tests.ingest.smtp_client import RawSMTP
from tests.kafka_reader import read_topic

BODY = b"Subject: hi\r\n\r\nhello\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src: str) -> bytes:
    return f"PROXY TCP4 {src} 10.0.0.1 40000 25\r\n".encode()


def v2(src: str, local: bool = False) -> bytes:
    if local:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    if ":" in src:
        addrs = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address("2001:db8::1").packed
        family = 0x21
    else:
        addrs = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address("10.0.0.1").packed
        family = 0x11
    payload = addrs + struct.pack("!HH", 40000, 25)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(payload)) + payload


async def proxied_node(make_node, tmp_path, **extra):
    path = tenants_yaml(tmp_path, TENANT % ("acme", "acme.example", "203.0.113.0/24, '2001:db8:5::/48'", ""))
    return await make_node(POSTWARDEN_TENANTS_FILE=path, POSTWARDEN_PROXY_PROTOCOL="true", **extra)


async def send_via(port: int, header: bytes) -> tuple[int, str]:
    c = await RawSMTP.connect(port, preamble=header)
    await c.cmd("EHLO client.test")
    result = await c.transaction("a@x.example", ["u@acme.example"], BODY)
    await c.close()
    return result


async def test_v1_and_v2_headers_set_the_recorded_client_ip(make_node, broker, tmp_path):
    node = await proxied_node(make_node, tmp_path)
    port = node.settings.smtp_port
    sent = {}
    for header, ip in ((v1("203.0.113.7"), "203.0.113.7"), (v2("203.0.113.8"), "203.0.113.8"),
                       (v2("2001:db8:5::9"), "2001:db8:5::9")):
        code, text = await send_via(port, header)
        assert code == 250, text
        sent[text.rsplit(" ", 1)[1]] = ip
    recs = await asyncio.to_thread(read_topic, broker.bootstrap, "mail.inbound", lambda r: len(r) >= 3)
    for rec in recs:
        env = Envelope.from_headers(rec.headers)
        assert env.client_ip == sent[env.message_id]
        assert f"([{env.client_ip}])".encode() in rec.value.split(b"\r\n")[0]


async def test_relay_check_uses_the_proxied_address(make_node, tmp_path):
    node = await proxied_node(make_node, tmp_path)
    # The socket peer is 127.0.0.1 (allowed nowhere here); the proxied one decides.
    code, text = await send_via(node.settings.smtp_port, v2("192.0.2.50"))
    assert code == 550 and "network may not relay" in text


async def test_connection_limit_is_keyed_by_the_proxied_address(make_node, tmp_path):
    node = await proxied_node(make_node, tmp_path, POSTWARDEN_SMTP_MAX_CONNECTIONS_PER_IP="1")
    port = node.settings.smtp_port
    first = await RawSMTP.connect(port, preamble=v1("203.0.113.7"))
    other = await RawSMTP.connect(port, preamble=v2("203.0.113.8"))  # same socket peer, other client
    assert (await other.cmd("NOOP"))[0] == 250
    same = await RawSMTP.connect(port, preamble=v2("203.0.113.7"), greet=False)
    code, text = await same.reply()
    assert code == 421 and "from your address" in text
    for c in (first, other, same):
        await c.close()


async def test_local_header_keeps_the_socket_peer_and_missing_header_is_dropped(make_node, tmp_path):
    node = await proxied_node(make_node, tmp_path)
    port = node.settings.smtp_port
    health = await RawSMTP.connect(port, preamble=v2("", local=True))  # load balancer health check
    assert (await health.cmd("NOOP"))[0] == 250
    assert {s.client_ip for s in node.sessions} == {"127.0.0.1"}
    await health.close()
    bare = await RawSMTP.connect(port, preamble=b"EHLO client.test\r\n", greet=False)
    assert await bare.reply() == (0, "")  # closed without a greeting
