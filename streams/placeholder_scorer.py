"""PLACEHOLDER scorer for the walking skeleton; the scoring engine replaces it.

It only looks for a handful of obvious phrases and the EICAR test string so
that the pipeline has both outcomes to route. It is not a spam filter.
"""

from __future__ import annotations

from postwarden.records import Envelope, RuleHit
from streams.scorer import ScoreResult

_PHRASES = (b"viagra", b"lottery winner", b"100% free", b"click here to claim")
_EICAR = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE"


class PlaceholderScorer:
    name = "placeholder"

    async def score(self, raw: bytes, envelope: Envelope) -> ScoreResult:
        lowered = raw.lower()
        hits = [RuleHit(f"PLACEHOLDER_PHRASE_{i}", 30.0, f"contains {p.decode()!r}")
                for i, p in enumerate(_PHRASES) if p in lowered]
        virus = "Eicar-Test-Signature" if _EICAR in raw else None
        score = min(100.0, sum(h.score for h in hits))
        categories = ["spam"] if score >= 50 else []
        return ScoreResult(score, {"spam": score}, categories, virus, hits)
