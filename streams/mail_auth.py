"""SPF (RFC 7208), DKIM (RFC 6376, verified by dkimpy) and DMARC (RFC 7489).

All DNS goes through the engine's Resolver, so timeouts and caching apply
uniformly. DKIM keys are fetched asynchronously first and handed to dkimpy's
synchronous verifier through its ``dnsfunc`` hook, which keeps the event loop
free while keys are being looked up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass
from email.utils import getaddresses
from functools import lru_cache

import dkim
from publicsuffixlist import PublicSuffixList

from streams.dns_resolver import DnsTempError, Resolver


@dataclass(frozen=True)
class AuthResults:
    """Each of spf, dkim, dmarc is None when not checked, else an RFC result word."""

    spf: str | None = None
    dkim: str | None = None
    dmarc: str | None = None
    dmarc_policy: str | None = None


_psl = PublicSuffixList()


@lru_cache(maxsize=50_000)
def organizational_domain(domain: str) -> str:
    domain = domain.lower().strip().rstrip(".")
    return _psl.privatesuffix(domain) or domain


# --- SPF -----------------------------------------------------------------

MAX_DNS_MECHANISMS = 10
MAX_VOID_LOOKUPS = 2


class _PermError(Exception):
    pass


class _Budget:
    def __init__(self) -> None:
        self.lookups = 0
        self.voids = 0

    def spend(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_DNS_MECHANISMS:
            raise _PermError("too many DNS lookups")

    def void(self, values: list[str]) -> list[str]:
        if not values:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError("too many void lookups")
        return values


_MACRO_RE = re.compile(r"%\{([slodiphcrtv])(\d*)(r?)([.\-+,/_=]*)\}|%%|%_|%-", re.I)


def _expand(spec: str, ip: str, sender: str, domain: str, helo: str) -> str:
    local, _, sender_domain = sender.rpartition("@")
    addr = ipaddress.ip_address(ip)
    values = {
        "s": sender, "l": local or "postmaster", "o": sender_domain, "d": domain, "h": helo,
        "v": "in-addr" if addr.version == 4 else "ip6",
        "i": ip if addr.version == 4 else ".".join(addr.exploded.replace(":", "")),
        "p": "unknown",
    }

    def one(m: re.Match) -> str:
        token = m.group(0)
        if token == "%%":
            return "%"
        if token == "%_":
            return " "
        if token == "%-":
            return "%20"
        letter, digits, reverse, delims = m.groups()
        value = values.get(letter.lower(), "")
        parts = re.split("[" + re.escape(delims or ".") + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            parts = parts[-int(digits):] if int(digits) else parts
        return ".".join(parts)

    return _MACRO_RE.sub(one, spec)


def _split_cidr(arg: str) -> tuple[str, int | None, int | None]:
    v4 = v6 = None
    m = re.match(r"^(.*?)(?:/(\d+))?(?://(\d+))?$", arg)
    assert m
    if m.group(2):
        v4 = int(m.group(2))
    if m.group(3):
        v6 = int(m.group(3))
    return m.group(1), v4, v6


def _in_net(ip: ipaddress._BaseAddress, addrs: list[str], v4: int | None, v6: int | None) -> bool:
    for a in addrs:
        try:
            prefix = (v4 if v4 is not None else 32) if ip.version == 4 else (v6 if v6 is not None else 128)
            if ip in ipaddress.ip_network(f"{a}/{prefix}", strict=False):
                return True
        except ValueError:
            continue
    return False


async def _addresses(resolver: Resolver, name: str, version: int) -> list[str]:
    return await (resolver.a(name) if version == 4 else resolver.aaaa(name))


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


async def _check_host(resolver: Resolver, ip: str, domain: str, sender: str, helo: str,
                      budget: _Budget, depth: int = 0) -> str:
    if depth > MAX_DNS_MECHANISMS:
        raise _PermError("include loop")
    records = [t for t in await resolver.txt(domain) if re.match(r"^v=spf1(\s|$)", t, re.I)]
    if not records:
        return "none"
    if len(records) > 1:
        raise _PermError("more than one SPF record")
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    redirect = None
    for term in records[0].split()[1:]:
        if "=" in term and not re.match(r"^[+\-~?]?[a-z0-9]+:", term, re.I):
            name, _, value = term.partition("=")
            if name.lower() == "redirect":
                redirect = value
            continue
        qualifier = "+"
        if term[0] in _QUALIFIERS:
            qualifier, term = term[0], term[1:]
        mech, _, arg = term.partition(":")
        if "/" in mech:
            mech, slash, rest = mech.partition("/")
            arg = arg + slash + rest
        mech = mech.lower()
        matched = False
        if mech == "all":
            matched = True
        elif mech == "ip4":
            matched = addr.version == 4 and _ip_match(addr, arg)
        elif mech == "ip6":
            matched = addr.version == 6 and _ip_match(addr, arg)
        elif mech in ("a", "mx"):
            budget.spend()
            target, v4, v6 = _split_cidr(arg)
            target = _expand(target, ip, sender, domain, helo) if target else domain
            hosts = [target]
            if mech == "mx":
                hosts = budget.void(await resolver.mx(target))[:10]
            for host in hosts:
                if _in_net(addr, budget.void(await _addresses(resolver, host, addr.version)), v4, v6):
                    matched = True
                    break
        elif mech == "include":
            budget.spend()
            result = await _check_host(resolver, ip, _expand(arg, ip, sender, domain, helo),
                                       sender, helo, budget, depth + 1)
            if result == "none":
                raise _PermError("include of a domain without SPF")
            matched = result == "pass"
        elif mech == "exists":
            budget.spend()
            matched = bool(budget.void(await resolver.a(_expand(arg, ip, sender, domain, helo))))
        elif mech == "ptr":
            # Deprecated by RFC 7208 and expensive: counted, never matched.
            budget.spend()
        else:
            raise _PermError(f"unknown mechanism {mech!r}")
        if matched:
            return _QUALIFIERS[qualifier]
    if redirect:
        budget.spend()
        result = await _check_host(resolver, ip, _expand(redirect, ip, sender, domain, helo),
                                   sender, helo, budget, depth + 1)
        return "permerror" if result == "none" else result
    return "neutral"


def _ip_match(addr: ipaddress._BaseAddress, arg: str) -> bool:
    try:
        return addr in ipaddress.ip_network(arg, strict=False)
    except ValueError as exc:
        raise _PermError(f"bad network {arg!r}") from exc


async def check_spf(resolver: Resolver, client_ip: str, mail_from: str, helo: str) -> str:
    """SPF result for the envelope: pass, fail, softfail, neutral, none, temperror or permerror."""
    try:
        ipaddress.ip_address(client_ip)
    except ValueError:
        return "none"
    sender = mail_from or f"postmaster@{helo}"
    domain = sender.rpartition("@")[2].lower().rstrip(".")
    if not domain or "." not in domain:
        return "none"
    try:
        return await _check_host(resolver, client_ip, domain, sender, helo, _Budget())
    except _PermError:
        return "permerror"
    except DnsTempError:
        return "temperror"


# --- DKIM ----------------------------------------------------------------

_TAG_RE = re.compile(r"(?:^|;)\s*([a-z]+)\s*=\s*([^;]*)", re.I)


def dkim_signatures(raw: bytes) -> list[tuple[str, str]]:
    """(domain, selector) of every DKIM-Signature header, from the raw header block."""
    head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
    out = []
    for m in re.finditer(rb"^dkim-signature:(.*(?:\r?\n[ \t].*)*)", head, re.I | re.M):
        tags = {k.lower(): re.sub(r"\s+", "", v) for k, v in
                _TAG_RE.findall(m.group(1).decode("ascii", "replace"))}
        if tags.get("d") and tags.get("s"):
            out.append((tags["d"].lower(), tags["s"]))
    return out


async def check_dkim(resolver: Resolver, raw: bytes) -> tuple[str, list[str]]:
    """(result, domains whose signatures verify); result pass/fail/none/temperror."""
    sigs = dkim_signatures(raw)
    if not sigs:
        return "none", []
    keys: dict[str, bytes | None] = {}
    temp = False
    for domain, selector in sigs[:5]:
        name = f"{selector}._domainkey.{domain}"
        try:
            records = await resolver.txt(name)
            keys[name] = "".join(records).encode() if records else None
        except DnsTempError:
            temp = True
            keys[name] = None

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".")
        return keys.get(key)

    # RSA verification is CPU work of a millisecond or so: off the event loop.
    passed = await asyncio.get_running_loop().run_in_executor(None, _verify_all, raw, len(sigs), dnsfunc)
    if passed:
        return "pass", passed
    return ("temperror" if temp else "fail"), []


def _verify_all(raw: bytes, count: int, dnsfunc) -> list[str]:
    passed = []
    try:
        verifier = dkim.DKIM(raw)
    except Exception:  # dkimpy rejects some malformed messages at construction
        return passed
    for idx in range(min(count, 5)):
        try:
            if verifier.verify(idx=idx, dnsfunc=dnsfunc):
                passed.append(verifier.domain.decode().lower())
        except Exception:  # dkim.DKIMException and parse errors of hostile signatures
            continue
    return passed


# --- DMARC ---------------------------------------------------------------

def from_domain(from_header: str) -> str:
    pairs = getaddresses([from_header])
    if len(pairs) != 1 or "@" not in pairs[0][1]:
        return ""
    return pairs[0][1].rpartition("@")[2].lower().rstrip(".")


async def _dmarc_record(resolver: Resolver, domain: str) -> dict[str, str] | None:
    for candidate in dict.fromkeys((domain, organizational_domain(domain))):
        records = [t for t in await resolver.txt(f"_dmarc.{candidate}")
                   if re.match(r"^v\s*=\s*DMARC1\s*(;|$)", t, re.I)]
        if len(records) == 1:
            tags = {k.lower(): v.strip() for k, v in _TAG_RE.findall(records[0])}
            if candidate != domain and "sp" in tags:
                tags["p"] = tags["sp"]
            return tags
    return None


def _aligned(a: str, b: str, mode: str) -> bool:
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


async def check_dmarc(resolver: Resolver, header_from: str, spf: str | None, mail_from: str,
                      dkim_domains: list[str]) -> tuple[str, str | None]:
    """(result, published policy); result pass/fail/none/temperror."""
    domain = from_domain(header_from)
    if not domain:
        return "none", None
    try:
        tags = await _dmarc_record(resolver, domain)
    except DnsTempError:
        return "temperror", None
    if tags is None:
        return "none", None
    policy = tags.get("p", "none").lower()
    envelope_domain = mail_from.rpartition("@")[2].lower()
    spf_ok = spf == "pass" and bool(envelope_domain) and _aligned(envelope_domain, domain, tags.get("aspf", "r").lower())
    dkim_ok = any(_aligned(d, domain, tags.get("adkim", "r").lower()) for d in dkim_domains)
    return ("pass" if spf_ok or dkim_ok else "fail"), policy


async def authenticate(resolver: Resolver, raw: bytes, header_from: str,
                       client_ip: str, mail_from: str, helo: str) -> AuthResults:
    spf_task = check_spf(resolver, client_ip, mail_from, helo)
    dkim_task = check_dkim(resolver, raw)
    spf, (dkim_result, dkim_domains) = await asyncio.gather(spf_task, dkim_task)
    dmarc, policy = await check_dmarc(resolver, header_from, spf, mail_from, dkim_domains)
    return AuthResults(spf=spf, dkim=dkim_result, dmarc=dmarc, dmarc_policy=policy)
