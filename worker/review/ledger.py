"""The audit row every step of the queue appends, in the transaction of the step it records.

`review_audit` refuses UPDATE, DELETE and TRUNCATE (migration 0003), so what is
written here is the lasting account of who did what to an item, and from where.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from worker.review.origin import Origin

__all__ = ["audit", "origin_params"]


def audit(
    conn: sa.Connection,
    item_id: int,
    action: str,
    moderator: str,
    *,
    decision: str | None = None,
    reason: str | None = None,
    note: str | None = None,
    lease_expires_at: datetime | None = None,
    origin: Origin | None,
) -> None:
    """Append one audit row for `item_id` on `conn`, inside the caller's transaction."""
    conn.execute(
        sa.text(
            "INSERT INTO review_audit (item_id, action, moderator, decision, reason, note, "
            "lease_expires_at, via, os_user) VALUES (:item_id, :action, :moderator, :decision, "
            ":reason, :note, :lease, :via, :os_user)"
        ),
        {
            "item_id": item_id,
            "action": action,
            "moderator": moderator,
            "decision": decision,
            "reason": reason,
            "note": note,
            "lease": lease_expires_at,
            **origin_params(origin),
        },
    )


def origin_params(origin: Origin | None) -> dict[str, str | None]:
    """The `via` and `os_user` columns of an audit row for a step from `origin`."""
    return {"via": origin.via if origin else None, "os_user": origin.os_user if origin else None}
