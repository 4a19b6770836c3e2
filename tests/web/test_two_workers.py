"""Several workers: each user's request reaches the worker owning their partition, and the
quarantine survives worker restarts and rebalances (tables recovered from their changelogs)."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import wait_http_ok
from tests.web.stack import Browserless, Stack

pytestmark = pytest.mark.slow
USERS = [f"user{i}@example.com" for i in range(6)]


@pytest.fixture
def two(tmp_path) -> Iterator[Stack]:
    s = Stack(tmp_path, workers=2)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def served(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'postwarden_mailbox_requests_total\{served="(\w+)"\} ([0-9.e+]+)', text)}


_browsers: dict[str, Browserless] = {}


def check_all_readable(stack: Stack, ids: dict[str, str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    missing = dict(ids)
    while missing and time.monotonic() < deadline:
        for address, mid in list(missing.items()):
            b = _browsers.get(address)
            if b is None:  # signed in once: sessions live in cookies, not in a worker
                b = Browserless(stack.url)
                if b.login(address) != 302:
                    continue
                _browsers[address] = b
            status, _, page = b.request("GET", f"/quarantine/{mid}")
            if status == 200 and f"Hello {address}" in page:
                del missing[address]
        time.sleep(0.5)
    assert not missing, f"not readable: {missing}\n{stack.logs()[-5000:]}"


def test_requests_reach_the_partition_owner_and_survive_restarts(two):
    for address in USERS:
        two.create_user(address)
    ids = {a: two.quarantine(a, subject=f"Hello {a}", body=f"Hello {a}") for a in USERS}
    for a, mid in ids.items():
        two.wait_listed(a, mid)
    check_all_readable(two, ids)
    # The web front talks to worker0 only; worker1 owned some users and served them itself.
    first, second = served(two.worker_ports[0]), served(two.worker_ports[1])
    assert first.get("forwarded", 0) > 0 and second.get("local", 0) > 0, (first, second)
    assert first.get("local", 0) > 0

    # worker1 stops: its partitions move to worker0, which recovers them from the changelogs.
    assert two.workers[1].stop() == 0
    check_all_readable(two, ids)
    # worker1 comes back: partitions are shared again, nothing is lost.
    w = two.start_worker(1)
    wait_http_ok(f"http://127.0.0.1:{two.worker_ports[1]}/readyz", 60, w)
    check_all_readable(two, ids)
    # Both stop; one starts with an empty memory store and rebuilds everything from the changelogs.
    for p in two.workers:
        p.stop()
    w = two.start_worker(0)
    wait_http_ok(f"http://127.0.0.1:{two.worker_ports[0]}/readyz", 60, w)
    check_all_readable(two, ids)
    # Settings survived too.
    assert two.api("GET", "/api/v1/tenants/example/users/user0@example.com")[1]["has_password"]
