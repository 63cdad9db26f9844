"""How the moderators work: per-moderator pace and agreement, second-opinion agreement, reasons.

Read from `review_decisions`, where every live and undone decision is kept.
A second opinion agrees when it makes the same decision as the item's first;
a moderator's agreement rate is how often second opinions on her first
decisions agreed with her. These figures are for the team lead's triage of
the team's own work, not a ranking: they are shown to every moderator alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from worker.persistence import translated

__all__ = ["FIGURES_WINDOW_DAYS", "Figures", "ModeratorFigures", "figures"]

FIGURES_WINDOW_DAYS = 7
"""The figures cover decisions made in this many days."""


@dataclass(frozen=True)
class ModeratorFigures:
    """One moderator's decisions in the window, her pace, and how second opinions judged her."""

    moderator: str
    decisions: int
    undone: int
    per_hour: float
    """Decisions per hour in which she decided anything."""
    checked: int
    """Her first decisions that got a second opinion."""
    agreed: int

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.checked if self.checked else None


@dataclass(frozen=True)
class Figures:
    """The team's figures: second-opinion agreement, reasons, each moderator's line."""

    second_opinions: int
    agreed: int
    reasons: dict[str, int]
    moderators: list[ModeratorFigures] = field(default_factory=list)

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.second_opinions if self.second_opinions else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, rates included."""
        return {
            "window_days": FIGURES_WINDOW_DAYS,
            "second_opinions": self.second_opinions,
            "agreed": self.agreed,
            "agreement": self.agreement,
            "reasons": dict(self.reasons),
            "moderators": [{**asdict(m), "agreement": m.agreement} for m in self.moderators],
        }


_PAIRS = """
    SELECT f.moderator AS first_by, f.decision = s.decision AS agreed
    FROM review_decisions f JOIN review_decisions s
        ON s.item_id = f.item_id AND s.opinion = 2 AND s.undone_at IS NULL
    WHERE f.opinion = 1 AND f.undone_at IS NULL
        AND s.decided_at > now() - make_interval(days => :days)
"""


def figures(engine: sa.Engine) -> Figures:
    """The figures of the last FIGURES_WINDOW_DAYS days."""
    params = {"days": FIGURES_WINDOW_DAYS}
    with translated(), engine.connect() as conn:
        pace = conn.execute(
            sa.text(
                "SELECT moderator, count(*) FILTER (WHERE undone_at IS NULL) AS decisions, "
                "count(*) FILTER (WHERE undone_at IS NOT NULL) AS undone, "
                "count(DISTINCT date_trunc('hour', decided_at)) "
                "FILTER (WHERE undone_at IS NULL) AS hours "
                "FROM review_decisions WHERE decided_at > now() - make_interval(days => :days) "
                "GROUP BY moderator ORDER BY moderator"
            ),
            params,
        ).all()
        checks = {
            row.first_by: row
            for row in conn.execute(
                sa.text(
                    f"SELECT first_by, count(*) AS checked, count(*) FILTER (WHERE agreed) "
                    f"AS agreed FROM ({_PAIRS}) pairs GROUP BY first_by"
                ),
                params,
            )
        }
        reasons: dict[str, int] = dict(
            conn.execute(
                sa.text(
                    "SELECT reason, count(*) FROM review_decisions WHERE reason IS NOT NULL "
                    "AND undone_at IS NULL AND decided_at > now() - make_interval(days => :days) "
                    "GROUP BY reason ORDER BY count(*) DESC, reason"
                ),
                params,
            ).all()
        )
    lines = [
        ModeratorFigures(
            moderator=row.moderator,
            decisions=row.decisions,
            undone=row.undone,
            per_hour=round(row.decisions / max(row.hours, 1), 1),
            checked=checks[row.moderator].checked if row.moderator in checks else 0,
            agreed=checks[row.moderator].agreed if row.moderator in checks else 0,
        )
        for row in pace
    ]
    return Figures(
        second_opinions=sum(c.checked for c in checks.values()),
        agreed=sum(c.agreed for c in checks.values()),
        reasons=reasons,
        moderators=lines,
    )
