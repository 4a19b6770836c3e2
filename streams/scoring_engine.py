"""The real scorer: parse once, then virus scan, attachment policy, sender
authentication, rules and the statistical model, merged into one ScoreResult.

Scores are combined in logit space: the model's logit plus the scores of the
rules that fired gives the spam logit, and spam_score is its sigmoid on a
0..100 scale (50 is the default level). Every contribution is listed in
``rules`` so a user can see why a message was held.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

from postwarden.config import ConfigError, Settings
from postwarden.records import Envelope, RuleHit
from streams.attachment_policy import inspect as inspect_attachments
from streams.dns_resolver import CachingResolver, Resolver, parse_servers
from streams.mail_auth import AuthResults, authenticate
from streams.mime_parser import ParsedMessage, parse, strip_mbox_line
from streams.rules import RULES, Rule, RuleContext, run_rules
from streams.scorer import ScoreResult
from streams.spam_model import SpamModel
from streams.virus_scanner import ClamdAddress, ClamdScanner

log = logging.getLogger(__name__)

SCAN_UNAVAILABLE = "SCAN-UNAVAILABLE"
# Base logits of the derived categories: one strong rule of the category
# reaches the default level only on mail the model does not find clean.
PHISHING_BASE = -3.0
BULK_BASE = -3.0
MODEL_SHARE = 0.5
SPAM_CATEGORIES = ("spam", "phishing")
# Categories whose membership is a judgement on a score (the others, such as virus
# or dangerous_attachment, are facts), and the score that puts mail in them by default.
SCORED_CATEGORIES = ("spam", "phishing", "bulk")
DEFAULT_LEVEL = 50.0


def _sigmoid100(z: float) -> float:
    return 100.0 / (1.0 + math.exp(-max(-35.0, min(35.0, z))))


def rule_offset(msg: ParsedMessage) -> float:
    """Spam logit the rules add offline (no DNS, no envelope); the model trains on top of it."""
    ctx = RuleContext(msg, inspect_attachments(msg))
    return sum(r.score for r in run_rules(ctx) if r.category in SPAM_CATEGORIES)


@dataclass
class _Judged:
    """A message's verdict before its virus scan is in."""

    category_scores: dict[str, float]
    categories: list[str]
    hits: list[RuleHit]
    dangerous_rule: str  # the first dangerous-attachment rule that fired, or ""


class ScoringEngine:
    name = "engine-v1"

    def __init__(self, model: SpamModel | None = None, scanner: ClamdScanner | None = None,
                 resolver: Resolver | None = None, auth_timeout: float = 5.0,
                 rules: list[Rule] | None = None):
        self.model = model or SpamModel.load()
        self.scanner = scanner
        self.resolver = resolver
        self.auth_timeout = auth_timeout
        self.rules = list(RULES if rules is None else rules)

    @classmethod
    def from_settings(cls, settings: Settings) -> ScoringEngine:
        scanner = None
        if settings.clamd_address:
            # One connection per scan that can run at once (the score agent's actors and
            # the rescan agent): with fewer, every scan over the pool opened and closed one.
            scanner = ClamdScanner(ClamdAddress.parse(settings.clamd_address),
                                   settings.clamd_timeout, settings.clamd_connect_timeout,
                                   pool_size=settings.score_concurrency + 1)
        resolver = None
        if settings.dns_servers:
            resolver = CachingResolver(parse_servers(settings.dns_servers), settings.dns_timeout)
        try:
            model = SpamModel.load(settings.spam_model_path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"POSTWARDEN_SPAM_MODEL_PATH: {exc}") from exc
        return cls(model, scanner, resolver, settings.auth_timeout)

    # --- offline path: everything but the network ---------------------------

    def score_sync(self, raw: bytes, envelope: Envelope | None = None) -> ScoreResult:
        """Parse, rules, model and attachment policy; virus scan and DNS checks do not happen."""
        msg = parse(raw)
        return self._with_scan(msg, self._judge(msg, envelope, AuthResults()), scan=None)

    # --- the agent's path ----------------------------------------------------

    async def score(self, raw: bytes, envelope: Envelope) -> ScoreResult:
        # The scan goes first: clamd works on it on the other core while this one
        # parses and judges the content, instead of after the parse.
        scan_task = asyncio.ensure_future(self._scan(raw, envelope)) if self.scanner else None
        try:
            msg = parse(raw)
            auth = await self._authenticate(raw, msg, envelope)
            judged = self._judge(msg, envelope, auth)
        except BaseException:
            # A cancelled actor (rebalance, stop) or a failure leaves no scan running.
            if scan_task:
                scan_task.cancel()
            raise
        scan = await scan_task if scan_task else None
        return self._with_scan(msg, judged, scan)

    async def _scan(self, raw: bytes, envelope: Envelope):
        assert self.scanner is not None
        result = await self.scanner.scan(raw)
        if result.status == "error":
            log.warning("virus scan failed, holding message", extra={
                "message_id": envelope.message_id, "tenant": envelope.tenant,
                "reason": result.error})
        return result

    async def _authenticate(self, raw: bytes, msg: ParsedMessage, envelope: Envelope) -> AuthResults:
        if self.resolver is None or msg.unparseable:
            return AuthResults()
        try:
            return await asyncio.wait_for(
                authenticate(self.resolver, strip_mbox_line(raw), msg.get("from"),
                             envelope.client_ip, envelope.mail_from, envelope.helo),
                self.auth_timeout)
        except asyncio.TimeoutError:
            log.info("sender authentication timed out", extra={
                "message_id": envelope.message_id, "tenant": envelope.tenant})
            return AuthResults(spf="temperror", dkim="temperror", dmarc="temperror")

    # --- combination ---------------------------------------------------------

    def _judge(self, msg: ParsedMessage, envelope: Envelope | None, auth: AuthResults) -> _Judged:
        """Rules, model and attachment policy: everything but the virus scan."""
        report = inspect_attachments(msg)
        ctx = RuleContext(msg, report, auth, envelope.received_at if envelope else None)
        fired = run_rules(ctx, self.rules)
        model_logit = self.model.logit(msg, sum(r.score for r in fired if r.category in SPAM_CATEGORIES))

        z = {"spam": model_logit, "phishing": PHISHING_BASE + MODEL_SHARE * model_logit,
             "bulk": BULK_BASE + MODEL_SHARE * model_logit}
        for rule in fired:
            if rule.category in SPAM_CATEGORIES:
                z["spam"] += rule.score
            if rule.category in z and rule.category != "spam":
                z[rule.category] += rule.score
        category_scores = {c: round(_sigmoid100(v), 2) for c, v in z.items()}
        dangerous = [r for r in fired if r.category == "dangerous_attachment"]
        category_scores["dangerous_attachment"] = 100.0 if dangerous else 0.0

        hits = [RuleHit("SPAM_MODEL", round(model_logit, 3),
                        f"statistical token model {self.model.meta.get('name', '')}".strip())]
        hits += [RuleHit(r.name, r.score, r.description) for r in fired]
        # Categories at the default level; the policy stage applies each user's own
        # levels to category_scores (streams/policy.py).
        categories = [c for c in SCORED_CATEGORIES if category_scores.get(c, 0.0) >= DEFAULT_LEVEL]
        if dangerous:
            categories.append("dangerous_attachment")
        return _Judged(category_scores, categories, hits, dangerous[0].name if dangerous else "")

    def _with_scan(self, msg: ParsedMessage, judged: _Judged, scan) -> ScoreResult:
        category_scores, categories, hits = judged.category_scores, judged.categories, judged.hits
        virus = None
        if msg.unparseable:
            categories.append("unparseable")
            hits.append(RuleHit("MESSAGE_UNPARSEABLE", 0.0, f"message could not be parsed ({msg.error})"))
        if scan is None:
            categories.append("unscanned")
            hits.append(RuleHit("VIRUS_SCAN_DISABLED", 0.0, "no virus scan happened (ClamAV not configured)"))
        elif scan.status == "infected":
            virus = scan.signature
            categories.append("virus")
            hits.append(RuleHit("VIRUS_FOUND", 0.0, f"ClamAV: {scan.signature}"))
        elif scan.status == "error":
            virus = SCAN_UNAVAILABLE
            categories.append("scan_failed")
            hits.append(RuleHit("VIRUS_SCAN_FAILED", 0.0, "virus scanner unavailable: message held"))
        if virus is None and judged.dangerous_rule:
            # The attachment policy holds mail like a signature match would.
            virus = f"Policy.{judged.dangerous_rule}"
        category_scores["virus"] = 100.0 if virus and virus != SCAN_UNAVAILABLE else 0.0
        return ScoreResult(
            spam_score=category_scores["spam"], category_scores=category_scores,
            categories=categories, virus=virus, rules=hits)
