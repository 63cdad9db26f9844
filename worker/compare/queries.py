"""What `itmguard compare` reads from Postgres: both models' verdicts on each post, the post's
decision, and the caption and picture of the posts a lead should look at.

Reads only; the figures are computed from these rows by `worker.compare.summary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from worker.compare.summary import CONFIRMED, REJECTED, Pair
from worker.persistence import translated

__all__ = ["Picture", "load_pairs", "load_pictures"]

_PAIRS = f"""
WITH decided AS (
    SELECT DISTINCT ON (post_id) post_id, decision
    FROM review_items
    WHERE status = 'decided' AND decision IN ('{CONFIRMED}', '{REJECTED}')
    ORDER BY post_id, decided_at DESC, id DESC
)
SELECT a.post_id, a.verdict AS verdict_a, b.verdict AS verdict_b, a.score AS score_a,
    b.score AS score_b, a.threshold AS threshold_a, b.threshold AS threshold_b, d.decision
FROM verdicts a
JOIN verdicts b ON b.post_id = a.post_id AND b.model_id = :model_b
LEFT JOIN decided d ON d.post_id = a.post_id
WHERE a.model_id = :model_a {{since}}
ORDER BY a.post_id
"""


def load_pairs(
    engine: sa.Engine, model_a: str, model_b: str, *, since: datetime | None = None
) -> list[Pair]:
    """Every post both models have a verdict on, each with its latest moderators' decision.

    The decision may come from any model's review item of the post; escalations
    give none. With `since`, only posts both models scored at or after it.

    Raises:
        DatabaseUnavailable: the database could not be reached.
    """
    params: dict[str, Any] = {"model_a": model_a, "model_b": model_b}
    where = ""
    if since is not None:
        where = "AND a.scored_at >= :since AND b.scored_at >= :since"
        params["since"] = since
    with translated(), engine.connect() as conn:
        rows = conn.execute(sa.text(_PAIRS.format(since=where)), params).all()
    return [Pair(**row._mapping) for row in rows]


@dataclass(frozen=True)
class Picture:
    """What a review item kept of a post: its caption, and its image URL or JPEG thumbnail."""

    caption: str
    image_url: str | None
    thumbnail: bytes | None


def load_pictures(engine: sa.Engine, post_ids: Sequence[str]) -> dict[str, Picture]:
    """The caption and picture of each post in `post_ids` that has a review item.

    Only a flagged post gets a review item, and only from a model that queues
    its flags, so some posts have none and are missing from the result; of a
    post with several items, the first is used.

    Raises:
        DatabaseUnavailable: the database could not be reached.
    """
    if not post_ids:
        return {}
    with translated(), engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT DISTINCT ON (post_id) post_id, caption, image_url, thumbnail "
                "FROM review_items WHERE post_id = ANY(:ids) ORDER BY post_id, id"
            ),
            {"ids": list(post_ids)},
        ).all()
    return {
        row.post_id: Picture(
            caption=row.caption,
            image_url=row.image_url,
            thumbnail=None if row.thumbnail is None else bytes(row.thumbnail),
        )
        for row in rows
    }
