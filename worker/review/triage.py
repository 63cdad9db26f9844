"""Picking work and judging it in context: which part of the queue to work, and what else is
known about an item's post and its author.

A moderator may work the queue by model, by score band, or oldest first (the
order is `worker.review.queue`'s); the queue page shows how many items wait in
each model and band so that choice is informed. On an item, the other models'
verdicts on the same post and how often the post's author was flagged lately
(when post events carry `author_id`) say whether it is a one-off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from worker.persistence import translated

__all__ = [
    "ANY_ITEM",
    "AUTHOR_WINDOW_DAYS",
    "BANDS",
    "Context",
    "OtherVerdict",
    "Triage",
    "context",
    "pending_by_band",
]

BANDS = {"low": (0.0, 0.1), "mid": (0.1, 0.3), "high": (0.3, 1.0)}
"""Score bands: `low` holds the most confident mismatches."""

AUTHOR_WINDOW_DAYS = 30
"""How far back an author's flagged posts are counted."""


@dataclass(frozen=True)
class Triage:
    """Which pending items a claim may take: one model's, one score band's, or any."""

    model_id: str | None = None
    band: str | None = None

    def __post_init__(self) -> None:
        if self.band is not None and self.band not in BANDS:
            raise ValueError(f"band must be one of {', '.join(BANDS)}")

    def where(self) -> tuple[str, dict[str, Any]]:
        """An SQL condition on `review_items` and its parameters."""
        parts: list[str] = ["true"]
        params: dict[str, Any] = {}
        if self.model_id is not None:
            parts.append("model_id = :triage_model")
            params["triage_model"] = self.model_id
        if self.band is not None:
            parts.append("score >= :triage_lo AND score < :triage_hi")
            params["triage_lo"], params["triage_hi"] = BANDS[self.band]
        return " AND ".join(parts), params


ANY_ITEM = Triage()


@dataclass(frozen=True)
class OtherVerdict:
    """Another model's verdict on the same post."""

    model_id: str
    role: str
    verdict: str
    score: float | None


@dataclass(frozen=True)
class Context:
    """What else is known about an item's post and author."""

    verdicts: list[OtherVerdict]
    author_flagged: int | None
    """The author's other items queued in the last AUTHOR_WINDOW_DAYS; None without author_id."""


def context(engine: sa.Engine, item_id: int) -> Context:
    """The other verdicts on item `item_id`'s post and its author's recent flags."""
    with translated(), engine.connect() as conn:
        verdicts = conn.execute(
            sa.text(
                "SELECT v.model_id, v.role, v.verdict, v.score FROM verdicts v "
                "JOIN review_items r ON r.post_id = v.post_id AND r.model_id <> v.model_id "
                "WHERE r.id = :id ORDER BY v.model_id"
            ),
            {"id": item_id},
        ).all()
        flagged = conn.execute(
            sa.text(
                "SELECT CASE WHEN r.author_id IS NULL THEN NULL ELSE ("
                "SELECT count(*) FROM review_items o WHERE o.author_id = r.author_id "
                "AND o.id <> r.id AND o.created_at > now() - make_interval(days => :days)"
                ") END FROM review_items r WHERE r.id = :id"
            ),
            {"id": item_id, "days": AUTHOR_WINDOW_DAYS},
        ).scalar_one_or_none()
    return Context([OtherVerdict(**v._mapping) for v in verdicts], flagged)


def pending_by_band(engine: sa.Engine) -> list[dict[str, Any]]:
    """Pending items (lapsed leases included) per model and score band, with the oldest's age."""
    bands = " ".join(
        f"WHEN score < {hi} THEN '{name}'" for name, (_lo, hi) in BANDS.items() if hi < 1.0
    )
    with translated(), engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT model_id, CASE {bands} ELSE 'high' END AS band, count(*) AS pending, "
                "extract(epoch FROM now() - min(created_at)) AS oldest_s FROM review_items "
                "WHERE status = 'pending' OR (status = 'claimed' AND lease_expires_at <= now()) "
                "GROUP BY 1, 2 ORDER BY 1, min(score)"
            )
        ).all()
    return [dict(r._mapping) for r in rows]
