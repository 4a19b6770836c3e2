"""The one way the scoring engine asks DNS anything.

Every lookup is bounded by a timeout and cached (positive answers for their
TTL within bounds, negative answers briefly), so a slow or hostile DNS zone
can delay a message by at most the timeout and a burst of mail from one
domain costs one query.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.resolver


class DnsTempError(Exception):
    """The answer could not be had now (timeout, SERVFAIL); the caller reports temperror."""


class Resolver(Protocol):
    async def txt(self, name: str) -> list[str]: ...
    async def a(self, name: str) -> list[str]: ...
    async def aaaa(self, name: str) -> list[str]: ...
    async def mx(self, name: str) -> list[str]: ...


def parse_servers(spec: str) -> list[tuple[str, int]]:
    """``"127.0.0.1:5353, 192.0.2.53"`` -> [(host, port)]; IPv6 as ``[::1]:53``."""
    servers = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif item.count(":") == 1:
            host, port_text = item.split(":")
            port = int(port_text)
        else:
            host, port = item, 53
        if not 0 < port < 65536:
            raise ValueError(f"DNS server {item!r}: port out of range")
        servers.append((host, port))
    return servers


class CachingResolver:
    MIN_TTL = 60
    MAX_TTL = 3600
    NEGATIVE_TTL = 300

    def __init__(self, servers: list[tuple[str, int]], timeout: float = 2.0, cache_size: int = 10_000):
        if not servers:
            raise ValueError("CachingResolver needs at least one DNS server")
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [host for host, _ in servers]
        self._resolver.nameserver_ports = {host: port for host, port in servers}
        self._resolver.timeout = timeout
        self._resolver.lifetime = timeout
        self._resolver.cache = None
        self._cache: OrderedDict[tuple[str, str], tuple[float, list[str]]] = OrderedDict()
        self._cache_size = cache_size
        self.queries = 0

    async def _lookup(self, name: str, rdtype: str) -> list[str]:
        key = (name.lower().rstrip("."), rdtype)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(key)
            return hit[1]
        self.queries += 1
        try:
            answer = await self._resolver.resolve(key[0] + ".", rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            values, ttl = [], self.NEGATIVE_TTL
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
            raise DnsTempError(f"{rdtype} lookup failed: {type(exc).__name__}") from exc
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{rdtype} lookup failed: {type(exc).__name__}") from exc
        else:
            values = [_text(rdata, rdtype) for rdata in answer]
            ttl = min(max(answer.rrset.ttl if answer.rrset else 0, self.MIN_TTL), self.MAX_TTL)
        self._cache[key] = (now + ttl, values)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return values

    async def txt(self, name: str) -> list[str]:
        return await self._lookup(name, "TXT")

    async def a(self, name: str) -> list[str]:
        return await self._lookup(name, "A")

    async def aaaa(self, name: str) -> list[str]:
        return await self._lookup(name, "AAAA")

    async def mx(self, name: str) -> list[str]:
        return await self._lookup(name, "MX")


def _text(rdata, rdtype: str) -> str:
    if rdtype == "TXT":
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if rdtype == "MX":
        return rdata.exchange.to_text(omit_final_dot=True)
    return rdata.address
