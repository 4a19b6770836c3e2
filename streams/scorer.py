"""What every scorer returns, and the interface the score agent calls.

The score agent parses nothing itself: it hands the raw bytes and the envelope
to one Scorer, which must always return a ScoreResult (a message that cannot
be parsed is a category of its own, never an exception).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from postwarden.records import Envelope, RuleHit, verdict_label


@dataclass(frozen=True, slots=True)
class ScoreResult:
    spam_score: float  # 0..100
    category_scores: dict[str, float] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)
    virus: str | None = None
    rules: list[RuleHit] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return verdict_label(self.virus, self.categories)


class Scorer(Protocol):
    name: str

    async def score(self, raw: bytes, envelope: Envelope) -> ScoreResult: ...
