"""Per-client-IP and total connection counts, and per-IP message rate.

Keys are the real client IP (after PROXY protocol), never logged. Memory stays
bounded: connection counts drop to zero and are removed, and the rate window
is a fixed one-minute bucket that is cleared as a whole when it rolls over.
"""

from __future__ import annotations

import time


class ConnectionLimits:
    def __init__(self, total: int, per_ip: int) -> None:
        self.total_limit, self.per_ip_limit = total, per_ip
        self.total = 0
        self._by_ip: dict[str, int] = {}

    def admit(self, ip: str) -> str | None:
        """Counts the connection in, or returns why it may not come in ('total' | 'per_ip')."""
        if self.total >= self.total_limit:
            return "total"
        if self._by_ip.get(ip, 0) >= self.per_ip_limit:
            return "per_ip"
        self.total += 1
        self._by_ip[ip] = self._by_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self._by_ip.get(ip, 1) - 1
        if left:
            self._by_ip[ip] = left
        else:
            self._by_ip.pop(ip, None)


class MessageRate:
    """At most ``per_minute`` messages per IP in each one-minute window (0: unlimited)."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._window = -1
        self._counts: dict[str, int] = {}

    def allow(self, ip: str) -> bool:
        if not self.per_minute:
            return True
        window = int(self._clock() // 60)
        if window != self._window:
            self._window, self._counts = window, {}
        n = self._counts.get(ip, 0)
        if n >= self.per_minute:
            return False
        self._counts[ip] = n + 1
        return True
