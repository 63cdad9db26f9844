"""The figures of `itmguard compare`, from plain rows: one `Pair` per post both models scored.

Kept free of the database so the figures can be checked by hand on a few rows.
A model *flags* a post when its verdict is `mismatch`. Moderators' decisions
belong to posts, not to the model whose review item they were made on: the
latest `confirmed_mismatch` or `not_a_mismatch` on any of a post's items is
the post's ground truth, and `escalate` gives none. A model's precision is the
share of the posts it flagged and moderators decided that they confirmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "CONFIRMED",
    "REJECTED",
    "VERDICTS",
    "Comparison",
    "ModelFigures",
    "Pair",
    "compare_pairs",
]

VERDICTS = ("match", "mismatch", "error")
"""The verdicts a post can get; the confusion table has a row and a column for each."""
CONFIRMED = "confirmed_mismatch"
REJECTED = "not_a_mismatch"


@dataclass(frozen=True, slots=True)
class Pair:
    """One post's verdicts under model A and model B, and its moderators' decision if any."""

    post_id: str
    verdict_a: str
    verdict_b: str
    score_a: float | None
    score_b: float | None
    threshold_a: float
    threshold_b: float
    decision: str | None
    """`confirmed_mismatch`, `not_a_mismatch`, or None where no moderator decided the post."""

    @property
    def difference(self) -> float | None:
        """How far apart the two scores are; None where either model gave an error."""
        if self.score_a is None or self.score_b is None:
            return None
        return abs(self.score_a - self.score_b)


@dataclass(frozen=True)
class ModelFigures:
    """One model's figures over the compared posts."""

    model_id: str
    posts: int
    flagged: int
    errors: int
    thresholds: tuple[float, ...]
    """Every threshold its verdicts were decided with (one, unless it was changed meanwhile)."""
    decided_flagged: int
    """Posts it flagged that moderators decided."""
    confirmed_flagged: int
    """Posts it flagged that moderators confirmed as mismatches."""
    confirmed_missed: tuple[str, ...]
    """Post ids moderators confirmed as mismatches that it did not flag."""

    @property
    def flag_rate(self) -> float | None:
        return _ratio(self.flagged, self.posts)

    @property
    def precision(self) -> float | None:
        """Confirmed among its decided flags; None when moderators decided none of them."""
        return _ratio(self.confirmed_flagged, self.decided_flagged)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "flagged": self.flagged,
            "flag_rate": self.flag_rate,
            "errors": self.errors,
            "thresholds": list(self.thresholds),
            "decided_flagged": self.decided_flagged,
            "confirmed_flagged": self.confirmed_flagged,
            "precision": self.precision,
            "confirmed_missed": len(self.confirmed_missed),
            "confirmed_missed_post_ids": list(self.confirmed_missed),
        }


@dataclass(frozen=True)
class Comparison:
    """Model A against model B over the posts both scored."""

    a: ModelFigures
    b: ModelFigures
    since: datetime | None
    posts: int
    agreed: int
    confusion: dict[str, dict[str, int]]
    """Posts by A's verdict (outer key), then B's verdict (inner key)."""
    decided: int
    confirmed: int
    disagreements: int
    top: tuple[Pair, ...]
    """The posts whose verdicts differ, the largest score difference first."""

    @property
    def agreement_rate(self) -> float | None:
        return _ratio(self.agreed, self.posts)

    def to_dict(self, *, generated_at: datetime, plots: dict[str, str]) -> dict[str, Any]:
        """The JSON summary of `schemas/compare-summary.v1.json` (post ids, never content)."""
        return {
            "schema_version": 1,
            "generated_at": generated_at.isoformat(timespec="seconds"),
            "since": None if self.since is None else self.since.isoformat(),
            "posts": self.posts,
            "agreed": self.agreed,
            "agreement_rate": self.agreement_rate,
            "disagreements": self.disagreements,
            "confusion": self.confusion,
            "decided": self.decided,
            "confirmed": self.confirmed,
            "models": {"a": self.a.to_dict(), "b": self.b.to_dict()},
            "top_disagreements": [
                {
                    "post_id": p.post_id,
                    "verdict_a": p.verdict_a,
                    "verdict_b": p.verdict_b,
                    "score_a": p.score_a,
                    "score_b": p.score_b,
                    "difference": p.difference,
                    "decision": p.decision,
                }
                for p in self.top
            ],
            "plots": plots,
        }


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _figures(
    model_id: str, verdicts: Sequence[str], thresholds: set[float], pairs: Sequence[Pair]
) -> ModelFigures:
    """`model_id`'s figures; `verdicts[i]` is its verdict on `pairs[i]`."""
    flagged = [v == "mismatch" for v in verdicts]
    decided = [p.decision is not None and f for p, f in zip(pairs, flagged, strict=True)]
    return ModelFigures(
        model_id=model_id,
        posts=len(pairs),
        flagged=sum(flagged),
        errors=sum(v == "error" for v in verdicts),
        thresholds=tuple(sorted(thresholds)),
        decided_flagged=sum(decided),
        confirmed_flagged=sum(
            f and p.decision == CONFIRMED for p, f in zip(pairs, flagged, strict=True)
        ),
        confirmed_missed=tuple(
            p.post_id
            for p, f in zip(pairs, flagged, strict=True)
            if p.decision == CONFIRMED and not f
        ),
    )


def _top(pairs: Sequence[Pair], n: int) -> tuple[Pair, ...]:
    """The `n` disagreements with the largest score difference; those with an error last."""
    differing = [p for p in pairs if p.verdict_a != p.verdict_b]
    differing.sort(key=lambda p: (p.difference is None, -(p.difference or 0.0), p.post_id))
    return tuple(differing[:n])


def compare_pairs(
    pairs: Sequence[Pair],
    model_a: str,
    model_b: str,
    *,
    since: datetime | None = None,
    top: int = 20,
) -> Comparison:
    """Agreement, the confusion table, each model's flag rate and precision, and the `top`
    largest disagreements, over `pairs`.

    Args:
        since: the earliest verdict time the pairs were chosen by, recorded in the summary.
    """
    confusion = {a: dict.fromkeys(VERDICTS, 0) for a in VERDICTS}
    for p in pairs:
        confusion[p.verdict_a][p.verdict_b] += 1
    a = _figures(model_a, [p.verdict_a for p in pairs], {p.threshold_a for p in pairs}, pairs)
    b = _figures(model_b, [p.verdict_b for p in pairs], {p.threshold_b for p in pairs}, pairs)
    agreed = sum(p.verdict_a == p.verdict_b for p in pairs)
    return Comparison(
        a=a,
        b=b,
        since=since,
        posts=len(pairs),
        agreed=agreed,
        confusion=confusion,
        decided=sum(p.decision is not None for p in pairs),
        confirmed=sum(p.decision == CONFIRMED for p in pairs),
        disagreements=len(pairs) - agreed,
        top=_top(pairs, top),
    )
