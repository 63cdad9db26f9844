"""Review items as moderators see them, and every read of the queue that changes nothing.

The records (`Item`, `AuditEntry`, `QueueStats`) and the columns an `Item` is
built from live here, so the queue's writes (`worker.review.queue`) return
the same records its reads do. A lapsed lease counts as pending in every read:
the next claim anywhere returns such an item to the queue, so that is what a
moderator can expect of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from worker.errors import ItemNotFound
from worker.persistence import translated

__all__ = [
    "DECISIONS",
    "ITEM_COLUMNS",
    "STATUSES",
    "AuditEntry",
    "Item",
    "QueueStats",
    "get_item",
    "held_by",
    "history",
    "item_columns",
    "list_items",
    "stats",
    "thumbnail",
]

DECISIONS = ("confirmed_mismatch", "not_a_mismatch", "escalate")
STATUSES = ("pending", "claimed", "decided")

_ITEM_NAMES = (
    "id",
    "post_id",
    "model_id",
    "score",
    "threshold",
    "status",
    "created_at",
    "event_time",
    "caption",
    "image_url",
    "claimed_by",
    "claimed_at",
    "lease_expires_at",
    "decision",
    "decided_by",
    "decided_at",
    "note",
    "reason",
    "opinion",
    "author_id",
    "explanation",
)


def item_columns(alias: str = "") -> str:
    """The columns an `Item` is built from; `thumbnail` only as whether there is one.

    The bytes stay out so that listing a page of items never drags every
    thumbnail over the wire; `thumbnail` fetches one when a page shows it.
    """
    prefix = f"{alias}." if alias else ""
    names = [prefix + name for name in _ITEM_NAMES]
    return ", ".join([*names, f"{prefix}thumbnail IS NOT NULL AS has_thumbnail"])


ITEM_COLUMNS = item_columns()


@dataclass(frozen=True)
class Item:
    """One review item as a moderator sees it (the thumbnail bytes are fetched apart)."""

    id: int
    post_id: str
    model_id: str
    score: float
    threshold: float
    status: str
    created_at: datetime
    event_time: datetime | None
    caption: str
    image_url: str | None
    has_thumbnail: bool
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    lease_expires_at: datetime | None = None
    decision: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    note: str | None = None
    reason: str | None = None
    opinion: int = 1
    """1 while the item waits for (or has) its first decision, 2 for a second opinion."""
    author_id: str | None = None
    explanation: dict[str, Any] | None = None
    """Which words of the caption the image contradicts (`worker.explain`), when the worker
    explained the mismatch."""

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Item:
        """The item in a row selected with `item_columns`; other columns in it are ignored."""
        return cls(**{k: v for k, v in row._mapping.items() if k in _ITEM_FIELDS})

    def held_by(self, moderator: str, now: datetime) -> bool:
        """Whether `moderator` holds a lease on the item that is still running at `now`."""
        return (
            self.status == "claimed"
            and self.claimed_by == moderator
            and self.lease_expires_at is not None
            and self.lease_expires_at > now
        )


_ITEM_FIELDS = frozenset(Item.__dataclass_fields__)


@dataclass(frozen=True)
class AuditEntry:
    """One row of an item's audit history: a claim, renew, release, expire, decide or undo.

    `via` is `web` or `cli` (None for rows older than migration 0004, or written
    without an origin); `os_user` is who ran the CLI.
    """

    id: int
    item_id: int
    action: str
    moderator: str
    decision: str | None
    note: str | None
    lease_expires_at: datetime | None
    at: datetime
    via: str | None = None
    os_user: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class QueueStats:
    """What the queue holds now: available, leased, decided by type, oldest waiting."""

    pending: int
    claimed: int
    expired_leases: int
    decided: dict[str, int]
    oldest_pending_age_s: float | None

    def to_dict(self) -> dict[str, Any]:
        """The counts as JSON-ready values, with the total of decisions added for dashboards."""
        return {
            "pending": self.pending,
            "claimed": self.claimed,
            "expired_leases": self.expired_leases,
            "decided": dict(self.decided),
            "decided_total": sum(self.decided.values()),
            "oldest_pending_age_s": self.oldest_pending_age_s,
        }


def get_item(engine: sa.Engine, item_id: int) -> Item:
    """Item `item_id` as it is now.

    Raises:
        ItemNotFound: no such item.
    """
    with translated(), engine.connect() as conn:
        row = conn.execute(
            sa.text(f"SELECT {ITEM_COLUMNS} FROM review_items WHERE id = :id"), {"id": item_id}
        ).one_or_none()
    if row is None:
        raise ItemNotFound(item_id)
    return Item.from_row(row)


def thumbnail(engine: sa.Engine, item_id: int) -> bytes | None:
    """The stored JPEG thumbnail of item `item_id`, or None.

    The worker keeps one for inline images and for the image it fetched from a
    URL; items queued before it kept URL images have none.
    """
    with translated(), engine.connect() as conn:
        value = conn.execute(
            sa.text("SELECT thumbnail FROM review_items WHERE id = :id"), {"id": item_id}
        ).scalar_one_or_none()
    return bytes(value) if value is not None else None


def held_by(engine: sa.Engine, moderator: str) -> list[Item]:
    """The items `moderator` holds with a live lease, oldest claim first."""
    with translated(), engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT {ITEM_COLUMNS} FROM review_items WHERE status = 'claimed' "
                "AND claimed_by = :m AND lease_expires_at > now() ORDER BY claimed_at, id"
            ),
            {"m": moderator},
        ).all()
    return [Item.from_row(r) for r in rows]


def history(engine: sa.Engine, item_id: int) -> list[AuditEntry]:
    """Every audit row of item `item_id`, oldest first.

    Raises:
        ItemNotFound: no such item.
    """
    with translated(), engine.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT 1 FROM review_items WHERE id = :id"), {"id": item_id}
        ).scalar_one_or_none()
        if exists is None:
            raise ItemNotFound(item_id)
        rows = conn.execute(
            sa.text(
                "SELECT id, item_id, action, moderator, decision, note, lease_expires_at, at, "
                "via, os_user, reason FROM review_audit WHERE item_id = :id ORDER BY id"
            ),
            {"id": item_id},
        ).all()
    return [AuditEntry(**r._mapping) for r in rows]


def list_items(
    engine: sa.Engine,
    *,
    status: str | None = None,
    decision: str | None = None,
    moderator: str | None = None,
    model_id: str | None = None,
    text: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Item]:
    """Items matching every filter given, newest first.

    Args:
        status: `pending` (expired leases included), `claimed` (live leases) or `decided`.
        moderator: who decided the item, or holds it.
        text: a substring of the caption, case-insensitive.
    """
    where = ["true"]
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status == "pending":
        where.append("(status = 'pending' OR (status = 'claimed' AND lease_expires_at <= now()))")
    elif status == "claimed":
        where.append("status = 'claimed' AND lease_expires_at > now()")
    elif status is not None:
        where.append("status = :status")
        params["status"] = status
    if decision is not None:
        where.append("decision = :decision")
        params["decision"] = decision
    if moderator is not None:
        where.append("(decided_by = :moderator OR claimed_by = :moderator)")
        params["moderator"] = moderator
    if model_id is not None:
        where.append("model_id = :model_id")
        params["model_id"] = model_id
    if text:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("caption ILIKE :text")
        params["text"] = f"%{escaped}%"
    with translated(), engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT {ITEM_COLUMNS} FROM review_items WHERE {' AND '.join(where)} "
                "ORDER BY created_at DESC, id DESC LIMIT :limit OFFSET :offset"
            ),
            params,
        ).all()
    return [Item.from_row(r) for r in rows]


def stats(engine: sa.Engine) -> QueueStats:
    """Counts of the queue now; an item whose lease ran out counts as pending."""
    counts = ", ".join(f"count(*) FILTER (WHERE decision = '{d}') AS {d}" for d in DECISIONS)
    with translated(), engine.connect() as conn:
        row = conn.execute(
            sa.text(
                f"""
            SELECT
                count(*) FILTER (WHERE status = 'pending'
                    OR (status = 'claimed' AND lease_expires_at <= now())) AS pending,
                count(*) FILTER (WHERE status = 'claimed' AND lease_expires_at > now()) AS claimed,
                count(*) FILTER (WHERE status = 'claimed' AND lease_expires_at <= now()) AS expired,
                extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending'
                    OR (status = 'claimed' AND lease_expires_at <= now()))) AS oldest,
                {counts}
            FROM review_items
            """
            )
        ).one()
    return QueueStats(
        pending=row.pending,
        claimed=row.claimed,
        expired_leases=row.expired,
        decided={d: getattr(row, d) for d in DECISIONS},
        oldest_pending_age_s=None if row.oldest is None else round(float(row.oldest), 3),
    )
