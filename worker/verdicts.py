"""The verdict rule and the verdict record: pure functions on plain data."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = ["FLAG_NAMESPACE", "Verdict", "decide", "flag_id"]

VerdictKind = Literal["match", "mismatch", "error"]

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

    def to_message(self) -> dict[str, Any]:
        """The JSON document of `schemas/verdict.v1.json`."""
        return {
            "schema_version": 1,
            "flag_id": flag_id(self.post_id, self.model_id),
            "post_id": self.post_id,
            "model_id": self.model_id,
            "score": self.score,
            "threshold": self.threshold,
            "verdict": self.verdict,
            "error_code": self.error_code,
            "scored_at": self.scored_at.isoformat(),
            "event_time": self.event_time.isoformat() if self.event_time else None,
        }
