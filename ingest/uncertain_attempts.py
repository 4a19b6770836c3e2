"""Message ids of transactions answered 451 whose record may still have been written.

A produce that times out is not a produce that failed: the broker can write the
record after we gave up and answered 451, and the sending MTA then sends the
same bytes again. Giving the retry the id of the uncertain attempt turns that
would-be duplicate into two records with one message id, which every stage
downstream already treats as one message (keyed by message id + recipient).
Only this node's attempts are known; retries that reach another node are not.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

# MTAs retry for days, but the first retries come within minutes to hours.
KEEP_SECONDS = 6 * 3600.0
CAPACITY = 50_000


def fingerprint(tenant: str, mail_from: str, rcpt_tos: Sequence[str], content: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (tenant, mail_from, *rcpt_tos):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    h.update(content)
    return h.digest()


class UncertainAttempts:
    def __init__(self, keep_seconds: float = KEEP_SECONDS, capacity: int = CAPACITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ids: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._keep, self._capacity, self._clock = keep_seconds, capacity, clock

    def __bool__(self) -> bool:
        # Lets the DATA path skip hashing entirely while no attempt is uncertain.
        return bool(self._ids)

    def remember(self, key: bytes, message_id: str) -> None:
        self._ids[key] = (message_id, self._clock() + self._keep)
        self._ids.move_to_end(key)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def message_id(self, key: bytes) -> str | None:
        found = self._ids.get(key)
        if found is None:
            return None
        if found[1] < self._clock():
            del self._ids[key]
            return None
        return found[0]
