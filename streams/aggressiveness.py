"""Per-category aggressiveness levels, applied by the policy stage per user.

The scorer puts a 0..100 score per category on every verdict and lists the
categories reached at the default level; a user who picks another level for
a category gets it applied later from the same scores, without rescoring.
"""

from __future__ import annotations

from collections.abc import Mapping

LEVELS: dict[str, float] = {
    "lenient": 80.0,
    "moderate": 65.0,
    "default": 50.0,
    "aggressive": 35.0,
    "most_aggressive": 20.0,
}
DEFAULT_LEVEL = "default"
# Categories whose membership depends on a level; the others (virus, unparseable,
# dangerous_attachment, scan_failed) are facts, not judgements.
SCORED_CATEGORIES = ("spam", "phishing", "bulk")


def threshold(level: str) -> float:
    try:
        return LEVELS[level]
    except KeyError:
        raise ValueError(f"unknown aggressiveness level {level!r}; one of {', '.join(LEVELS)}") from None


def categories_at(category_scores: Mapping[str, float], levels: Mapping[str, str] | None = None) -> list[str]:
    """Scored categories reached under ``levels`` (category -> level name; default for the rest)."""
    levels = levels or {}
    return [c for c in SCORED_CATEGORIES
            if category_scores.get(c, 0.0) >= threshold(levels.get(c, DEFAULT_LEVEL))]
