"""Verdicts and the outcomes that carry them: the verdict rule and plain records.

An `Outcome` is what became of one raw record; a `Verdict` is what the
worker concluded about one post under one model. The two differ when a post
arrives twice in one batch (an edit, a producer's retry): every record keeps
its outcome, but only the post's last one becomes its verdict row, review
item, flag and metric (`last_outcomes`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from worker.explain import Explanation

__all__ = [
    "FLAG_NAMESPACE",
    "Outcome",
    "Record",
    "ReviewContent",
    "Role",
    "Verdict",
    "VerdictKind",
    "decide",
    "flag_id",
    "last_outcomes",
]

VerdictKind = Literal["match", "mismatch", "error"]
Role = Literal["primary", "shadow"]

FLAG_NAMESPACE = uuid.UUID("5b0f3c52-6c8e-4b43-9a8e-3f1d2a7c9e41")
"""Namespace of flag ids; fixed forever so ids stay stable across releases."""


def decide(score: float, threshold: float) -> VerdictKind:
    """`mismatch` when the match probability is below the threshold, else `match`."""
    if math.isnan(score):
        raise ValueError("score is NaN")
    return "mismatch" if score < threshold else "match"


def flag_id(post_id: str | None, model_id: str) -> str:
    """The same id for every delivery of one post under one model, so consumers can dedupe."""
    return str(uuid.uuid5(FLAG_NAMESPACE, f"{model_id}\x00{post_id}"))


@dataclass(frozen=True)
class Verdict:
    """One post's outcome under one model, as stored and as sent."""

    post_id: str | None
    model_id: str
    score: float | None
    threshold: float
    verdict: VerdictKind
    error_code: str | None
    scored_at: datetime
    event_time: datetime | None
    role: Role = "primary"
    """`primary`: the model in service; `shadow`: a candidate whose verdicts are only stored."""


@dataclass(frozen=True)
class Record:
    """A raw message and where it came from."""

    payload: bytes
    topic: str
    partition: int | None = None
    offset: int | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class ReviewContent:
    """What a moderator needs to judge a mismatch without another system.

    Every picture the model scored keeps a small JPEG thumbnail, and URL images their
    URL too. `explanation` says which words of the caption the image contradicts, when
    the scorer explains; `author_id` who posted it, when the event says.
    """

    caption: str
    image_url: str | None
    thumbnail: bytes | None
    explanation: Explanation | None = None
    author_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one record.

    `verdict` is None only for a record with no usable post_id: there is no
    post to attach a row to, so it exists only as a dead letter.
    """

    record: Record
    verdict: Verdict | None
    dead_letter: dict[str, Any] | None
    review: ReviewContent | None = None

    @property
    def explanation(self) -> Explanation | None:
        """Which words of the caption the image contradicts, for an explained mismatch."""
        return self.review.explanation if self.review is not None else None


def last_outcomes(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """The outcomes that decide each post: one per (post_id, model_id), the last in the batch.

    A post's earlier outcomes in the same batch are superseded: they get no
    verdict row, no review item, no flag and no count. Postgres would refuse
    an upsert that touches one row twice anyway.
    """
    latest: dict[tuple[str, str], Outcome] = {}
    for outcome in outcomes:
        verdict = outcome.verdict
        if verdict is not None and verdict.post_id is not None:
            latest.pop((verdict.post_id, verdict.model_id), None)
            latest[(verdict.post_id, verdict.model_id)] = outcome
    return list(latest.values())
