"""Per-recipient policy: a verdict and the user's effective settings -> deliver or quarantine.

Order of the rules, first match wins:
1. a virus is always quarantined, whatever the settings;
2. mail of an unknown tenant and unparseable mail are held;
3. filtering OFF delivers everything else;
4. sender lists: the most specific entry decides (an address beats a domain),
   and when an address or domain is on both lists, blocking wins;
5. each category's score against the user's level for that category.

Level thresholds scale with the tenant's spam_threshold, which is the
"moderate" threshold: lenient asks for more, aggressive for less.
"""

from __future__ import annotations

from postwarden.config import Tenant
from postwarden.records import Verdict
from postwarden.users import EffectiveSettings

_LEVEL_FACTOR = {"lenient": 1.5, "moderate": 1.0, "aggressive": 0.6, "most_aggressive": 0.3}


def threshold(level: str, tenant: Tenant) -> float | None:
    """Score at or above which a category is quarantined; None for "off"."""
    if level == "off":
        return None
    return min(100.0, tenant.spam_threshold * _LEVEL_FACTOR[level])


def _sender_match(sender: str, entries: tuple[str, ...]) -> int:
    """2: the address is listed, 1: its domain is, 0: neither."""
    sender = sender.lower()
    if sender in entries:
        return 2
    domain = sender.rpartition("@")[2]
    # A listed domain also covers its subdomains.
    labels = domain.split(".")
    if any(".".join(labels[i:]) in entries for i in range(len(labels) - 1)):
        return 1
    return 0


def decide(verdict: Verdict, tenant: Tenant | None, settings: EffectiveSettings | None) -> tuple[str, str]:
    """(action, reason) for one recipient."""
    if verdict.virus:
        return "quarantine", "virus"
    if tenant is None or settings is None:
        return "quarantine", "unknown_tenant"
    if "unparseable" in verdict.categories:
        return "quarantine", "unparseable"
    if not settings.filtering:
        return "deliver", "filtering_off"
    blocked = _sender_match(verdict.mail_from, settings.block)
    allowed = _sender_match(verdict.mail_from, settings.allow)
    if blocked and blocked >= allowed:
        return "quarantine", "blocked_sender"
    if allowed:
        return "deliver", "allowed_sender"
    scores = dict(verdict.category_scores) or {"spam": verdict.spam_score}
    for category, score in sorted(scores.items(), key=lambda kv: -kv[1]):
        limit = threshold(settings.level_for(category), tenant)
        if limit is not None and score >= limit:
            return "quarantine", category
    return "deliver", "clean"
