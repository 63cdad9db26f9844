"""Moderators' decisions as labelled data for `itmguard calibrate --labelled`.

The review queue is where ground truth comes from: a moderator who confirms a
mismatch, or overrules one, has labelled that post. Exporting those labels
lets the threshold be recalibrated on the traffic the worker really sees.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import sqlalchemy as sa

from worker.persistence import translated

__all__ = ["LABELS", "ExportCounts", "export_labels"]

LABELS = {"confirmed_mismatch": 0, "not_a_mismatch": 1}
"""Calibration labels (1 = image and caption match); `escalate` gives no label."""


@dataclass
class ExportCounts:
    """What `export_labels` wrote and what it left out, and why."""

    written: int = 0
    escalated: int = 0
    superseded: int = 0
    conflicts: int = 0
    unusable: int = 0
    second_opinions: int = 0
    """Labels written whose decision is a second opinion on another moderator's first."""
    agreed: int = 0
    """Of those, the ones where the two decisions agreed."""


def export_labels(
    engine: sa.Engine,
    out: TextIO,
    *,
    model_id: str | None = None,
    since: datetime | None = None,
) -> ExportCounts:
    """Write decided items as labelled post events for `itmguard calibrate --labelled`.

    One JSON line per post: the post event (`post_id`, `caption`, `image` with
    the URL, or the stored thumbnail as base64 `data`, `created_at`) plus
    `label`: 0 for `confirmed_mismatch`, 1 for `not_a_mismatch`. Escalated
    items carry no label and are left out. A post reviewed under several
    models keeps its latest decision; when its decisions disagree it counts
    as a conflict. `metadata.review` says where each label came from: the
    decision, its reason, and for an item that had a second opinion the first
    decision and whether the two agreed (the label is the second opinion).

    Args:
        model_id: only items queued by this model's flags.
        since: only decisions made at or after this time (timezone-aware), so a
            recalibration can use the labels of the traffic since a change.
    """
    counts = ExportCounts()
    where = "status = 'decided'"
    params: dict[str, Any] = {}
    if model_id is not None:
        where += " AND model_id = :model_id"
        params["model_id"] = model_id
    if since is not None:
        where += " AND decided_at >= :since"
        params["since"] = since
    with translated(), engine.connect() as conn:
        counts.escalated = conn.execute(
            sa.text(f"SELECT count(*) FROM review_items WHERE {where} AND decision = 'escalate'"),
            params,
        ).scalar_one()
        rows = conn.execution_options(yield_per=500).execute(
            sa.text(
                "SELECT id, post_id, model_id, score, threshold, caption, image_url, thumbnail, "
                "event_time, decision, decided_at, reason, (SELECT f.decision FROM "
                "review_decisions f WHERE f.item_id = review_items.id AND f.opinion = 1 "
                "AND f.undone_at IS NULL AND review_items.opinion = 2) AS first_decision "
                f"FROM review_items WHERE {where} "
                "AND decision <> 'escalate' ORDER BY post_id, decided_at DESC, id DESC"
            ),
            params,
        )
        current: str | None = None
        label = -1
        for row in rows:
            if row.post_id == current:
                counts.superseded += 1
                if LABELS[row.decision] != label:
                    counts.conflicts += 1
                continue
            event = _labelled_event(row)
            if event is None:
                counts.unusable += 1
                continue
            current, label = row.post_id, event["label"]
            out.write(json.dumps(event, ensure_ascii=False) + "\n")
            counts.written += 1
            if row.first_decision is not None:
                counts.second_opinions += 1
                counts.agreed += row.first_decision == row.decision
    return counts


def _labelled_event(row: sa.Row[Any]) -> dict[str, Any] | None:
    if not row.caption:
        return None
    if row.image_url:
        image = {"url": row.image_url}
    elif row.thumbnail is not None:
        image = {"data": base64.b64encode(bytes(row.thumbnail)).decode("ascii")}
    else:
        return None
    event: dict[str, Any] = {"post_id": row.post_id, "caption": row.caption, "image": image}
    if row.event_time is not None:
        event["created_at"] = row.event_time.isoformat()
    event["metadata"] = {
        "review": {
            "item_id": row.id,
            "model_id": row.model_id,
            "score": row.score,
            "threshold": row.threshold,
            "decision": row.decision,
            "decided_at": row.decided_at.isoformat(),
            "reason": row.reason,
            "image_source": "url" if "url" in image else "thumbnail",
        }
    }
    if row.first_decision is not None:
        event["metadata"]["review"]["second_opinion"] = {
            "first_decision": row.first_decision,
            "agreed": row.first_decision == row.decision,
        }
    event["label"] = LABELS[row.decision]
    return event
