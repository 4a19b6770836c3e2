"""A running Postwarden for web tests: broker, worker(s), `postwarden web`, optionally SMTP ingest.

Started once per test module (a worker needs seconds to join its group) and
stopped by PID. Each test uses its own addresses, so tests do not see each
other's mail.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from pathlib import Path

from kafka import KafkaProducer

from postwarden.held_mail import HeldMessage
from postwarden.keyring import new_master_key, write_keys_file
from postwarden.local_services import Tansu, free_port
from postwarden.records import RoutedMessage, Verdict, new_message_id
from postwarden.topics import create_topics
from tests.conftest import Process, service_env, wait_http_ok
from tests.kafka_reader import read_topic
from tests.smtp_servers import SmtpServer, start_server
from web.provider_api import hash_api_key

KEY_EXAMPLE = "pwk_test-key-for-example-tenant-0123456789"
KEY_OTHER = "pwk_test-key-for-other-tenant-0123456789abc"
PASSWORD = "correct horse battery staple"

TENANTS = """
tenants:
  - id: example
    domains: [example.com, example.net]
    relay_networks: [127.0.0.0/8]
    downstream: [{{host: 127.0.0.1, port: {downstream}}}]
    frame_ancestors: ["http://localhost:{portal}"]
    api_keys: ["{key_example}"]
  - id: other
    domains: [other.example]
    relay_networks: [127.0.0.0/8]
    downstream: [{{host: 127.0.0.1, port: {downstream}}}]
    api_keys: ["{key_other}"]
"""


class Stack:
    def __init__(self, tmp: Path, workers: int = 1, ingest: bool = False, delivery: bool = False,
                 settings: dict[str, str] | None = None) -> None:
        self.tmp, self.n_workers, self.with_ingest = tmp, workers, ingest
        self.settings = settings or {}  # extra POSTWARDEN_* for every process
        self.with_delivery = delivery
        self.downstream: SmtpServer | None = None
        self.processes: list[Process] = []
        self.portal_port, self.downstream_port = free_port(), free_port()
        self.web_port, self.web_health = free_port(), free_port()
        self.smtp_port, self.ingest_health = free_port(), free_port()
        self.worker_ports = [free_port() for _ in range(workers)]
        self.workers: list[Process] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def env(self, **extra: str) -> dict[str, str]:
        return service_env(self.tmp, self.broker.bootstrap, POSTWARDEN_TENANTS_FILE=str(self.tmp / "tenants.yaml"),
                           POSTWARDEN_KEYS_FILE=str(self.tmp / "keys.json"),
                           POSTWARDEN_PASSWORD_HASH_COST="10",
                           POSTWARDEN_LOG_LEVEL="DEBUG", **{**self.settings, **extra})

    def start(self) -> Stack:
        self.broker = Tansu(log_path=self.tmp / "tansu.log").start()
        create_topics([self.broker.bootstrap], partitions=2)
        (self.tmp / "tenants.yaml").write_text(TENANTS.format(
            downstream=self.downstream_port, portal=self.portal_port,
            key_example=hash_api_key(KEY_EXAMPLE), key_other=hash_api_key(KEY_OTHER)))
        write_keys_file(self.tmp / "keys.json", [new_master_key("k1")])
        for i in range(self.n_workers):
            self.start_worker(i)
        self.web = self.spawn(["web"], self.env(
            POSTWARDEN_WEB_PORT=str(self.web_port), POSTWARDEN_HEALTH_PORT=str(self.web_health),
            POSTWARDEN_PUBLIC_URL=self.url, POSTWARDEN_WORKER_URL=f"http://127.0.0.1:{self.worker_ports[0]}"), "web")
        if self.with_delivery:
            # The tenants' mailbox server, and the sink that relays mail.deliver to it.
            self.downstream = start_server(port=self.downstream_port)
            self.spawn(["sink", "delivery"], self.env(POSTWARDEN_HEALTH_PORT=str(free_port())), "delivery")
        if self.with_ingest:
            self.ingest = self.spawn(["ingest"], self.env(POSTWARDEN_SMTP_PORT=str(self.smtp_port),
                                                          POSTWARDEN_HEALTH_PORT=str(self.ingest_health)), "ingest")
            wait_http_ok(f"http://127.0.0.1:{self.ingest_health}/readyz", 30, self.ingest)
        wait_http_ok(f"http://127.0.0.1:{self.web_health}/healthz", 30, self.web)
        for w, port in zip(self.workers, self.worker_ports):
            wait_http_ok(f"http://127.0.0.1:{port}/readyz", 60, w)
        return self

    def spawn(self, args: list[str], env: dict[str, str], name: str) -> Process:
        p = Process(args, env, self.tmp / f"{name}.log").start()
        self.processes.append(p)
        return p

    def start_worker(self, i: int) -> Process:
        w = self.spawn(["worker"], self.env(POSTWARDEN_HEALTH_PORT=str(self.worker_ports[i]),
                                            POSTWARDEN_NODE_NAME=f"worker{i}"), f"worker{i}")
        if i < len(self.workers):
            self.workers[i] = w
        else:
            self.workers.append(w)
        return w

    def stop(self) -> None:
        for p in reversed(self.processes):
            if p.proc is not None and p.proc.poll() is None:
                p.stop()
        self.broker.stop()
        if self.downstream is not None:
            self.downstream.stop()

    def logs(self) -> str:
        return "\n".join(p.log() for p in self.processes)

    # -- putting mail in ---------------------------------------------------------------------

    def quarantine(self, recipient: str, subject: str = "Win big", body: str = "You are a lottery winner",
                   sender: str = "promo@shop.example", spam: float = 90.0, virus: str | None = None,
                   raw: bytes | None = None, received_at: float | None = None) -> str:
        """Sends a verdict through the policy agent; returns the message id."""
        mid = new_message_id()
        raw = raw or (f"From: Promo <{sender}>\r\nTo: {recipient}\r\nSubject: {subject}\r\n"
                      f"Message-ID: <{mid}@shop.example>\r\n\r\n{body}\r\n").encode()
        v = Verdict(message_id=mid, tenant=tenant_of(recipient), recipient=recipient, mail_from=sender,
                    received_at=received_at or time.time(), size=len(raw), spam_score=spam,
                    category_scores={"spam": spam}, categories=["spam"] if spam >= 50 else [], virus=virus,
                    rules=[{"name": "TEST_RULE", "score": spam, "description": "test rule"}], scorer="test", raw=raw)
        producer = KafkaProducer(bootstrap_servers=[self.broker.bootstrap], acks="all")
        producer.send("mail.verdicts", key=recipient.encode(), value=v.encode())
        producer.flush()
        producer.close()
        return mid

    def routed(self, topic: str, until=lambda r: False,
               timeout: float = 2.0) -> list[RoutedMessage | HeldMessage]:
        """Records of mail.deliver, or (sealed) of mail.quarantine."""
        record = HeldMessage if topic == "mail.quarantine" else RoutedMessage
        return [record.decode(r.value) for r in read_topic(self.broker.bootstrap, topic, until, timeout)]

    def wait_routed(self, topic: str, message_id: str, recipient: str,
                    timeout: float = 30.0) -> RoutedMessage | HeldMessage:
        record = HeldMessage if topic == "mail.quarantine" else RoutedMessage
        found = [m for m in self.routed(topic, lambda rs: any(
            record.decode(r.value).dedupe_key == (message_id, recipient) for r in rs), timeout)
            if m.dedupe_key == (message_id, recipient)]
        assert found, f"{message_id} never reached {topic}"
        return found[0]

    # -- provider API ------------------------------------------------------------------------

    def api(self, method: str, path: str, body=None, key: str = KEY_EXAMPLE, raw: bytes | None = None,
            content_type: str = "application/json") -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=60)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": content_type}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
        conn.close()
        return resp.status, json.loads(text) if text else {}

    def create_user(self, address: str, password: str = PASSWORD, settings: dict | None = None) -> None:
        status, out = self.api("PUT", f"/api/v1/tenants/{tenant_of(address)}/users/{address}",
                               {"password": password, "settings": settings or {}},
                               key=KEY_EXAMPLE if tenant_of(address) == "example" else KEY_OTHER)
        assert status == 200 and out["status"] == "ok", out

    def wait_listed(self, address: str, message_id: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            key = KEY_EXAMPLE if tenant_of(address) == "example" else KEY_OTHER
            status, out = self.api("GET", f"/api/v1/tenants/{tenant_of(address)}/users/{address}/quarantine"
                                          f"?limit=100", key=key)
            if status == 200:
                for e in out["entries"]:
                    if e["message_id"] == message_id:
                        return e
            time.sleep(0.3)
        raise AssertionError(f"{message_id} never listed for the user\n{self.logs()[-4000:]}")


def tenant_of(address: str) -> str:
    return "other" if address.endswith("@other.example") else "example"


class Browserless:
    """A cookie-keeping HTTP client that does not follow redirects, for the security tests."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict | None = None, headers: dict | None = None,
                cookies: dict | None = None) -> tuple[int, dict, str]:
        u = urllib.parse.urlsplit(self.base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        jar = cookies if cookies is not None else self.cookies
        h = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items()), **(headers or {})}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            h["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        out_headers = {k.lower(): v for k, v in resp.getheaders() if k.lower() != "set-cookie"}
        out_headers["set-cookie"] = [v for k, v in resp.getheaders() if k.lower() == "set-cookie"]
        if cookies is None:
            for c in out_headers["set-cookie"]:
                name, _, rest = c.partition("=")
                value = rest.split(";", 1)[0]
                if "Max-Age=0" in c:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
        conn.close()
        return resp.status, out_headers, text

    def csrf(self, path: str) -> str:
        status, _, text = self.request("GET", path)
        assert status == 200, (status, text[:500])
        return text.split('name="csrf" value="', 1)[1].split('"', 1)[0]

    def login(self, address: str, password: str = PASSWORD) -> int:
        token = self.csrf("/login")
        status, headers, _ = self.request("POST", "/login", {"csrf": token, "address": address,
                                                             "password": password})
        return status
