"""The quarantine store's cost per operation as one user's held mail grows.

    PYTHONPATH=. python bench/quarantine_index.py [--sizes 1000,10000,50000]

Fills a store (plain dicts, as the worker's in-memory tables) with sealed
messages for one recipient, then prints for each size: microseconds per add
(the last 500), per listing of the first page and of a page in the middle, per
close and per expire, the index values written per add, and the largest index
value (what one changelog record carries).
"""

from __future__ import annotations

import argparse
import time

from postwarden.held_mail import seal_held
from postwarden.keyring import Keyring, new_master_key
from postwarden.records import RoutedMessage
from postwarden.sealing import Sealer
from streams.quarantine_store import DAY, QuarantineStore

USER = "bench@example.com"


class Tracked(dict):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.largest = 0

    def __setitem__(self, key, value) -> None:
        self.writes += 1
        self.largest = max(self.largest, len(value))
        super().__setitem__(key, value)


def message(i: int) -> RoutedMessage:
    raw = (f"From: Sender {i} <s{i}@shop.example>\r\nTo: {USER}\r\nSubject: Offer number {i} for you\r\n"
           f"Date: Thu, 15 Jan 2027 08:00:00 +0000\r\n\r\n" + "body text " * 300).encode()
    return RoutedMessage(f"{i:032x}", "example", USER, f"s{i}@shop.example", "quarantine", "spam", 90.0,
                         None, ["spam"], [{"name": "RULE", "score": 90.0, "description": "a rule"}],
                         1000.0 + i, raw)


def timed(fn, repeat: int) -> float:
    start = time.perf_counter()
    for i in range(repeat):
        fn(i)
    return (time.perf_counter() - start) / repeat * 1e6


def run(size: int) -> None:
    sealer = Sealer(Keyring([new_master_key("k1")], "bench"))
    index, messages = Tracked(), {}
    store = QuarantineStore(index, messages, sealer)
    sealed = [seal_held(sealer, message(i)) for i in range(size)]
    for held in sealed[:-500]:
        store.add(held, 14, held.received_at)
    writes_before = index.writes
    add_us = timed(lambda i: store.add(sealed[size - 500 + i], 14, 1000.0 + size), 500)
    writes_per_add = (index.writes - writes_before) / 500
    first_us = timed(lambda i: store.listing(USER, "", 0, 25), 50)
    middle_us = timed(lambda i: store.listing(USER, "", size // 2, 25), 50)
    close_us = timed(lambda i: store.close(USER, f"{size // 3 + i:032x}", "released"), 200)
    expire_us = timed(lambda i: store.expire(USER, f"{i:032x}", 1000.0 + size + 15 * DAY), 200)
    print(f"held {size:>6}: add {add_us:7.1f} us ({writes_per_add:.0f} values written), "
          f"list first page {first_us:8.1f} us, page at {size // 2} {middle_us:8.1f} us, "
          f"close {close_us:6.1f} us, expire {expire_us:6.1f} us; largest index value "
          f"{index.largest / 1024:.1f} KiB (all of the index {sum(map(len, index.values())) / 1024 / 1024:.1f} MiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,50000")
    for size in (int(s) for s in ap.parse_args().sizes.split(",")):
        run(size)


if __name__ == "__main__":
    main()
