"""The moderators' review queue: claim with a lease, decide, release, audit, export labels.

Every function takes a SQLAlchemy Engine and runs one short transaction, so
the CLI, the web page and tests share the same rules. Claims take the next
pending row with `FOR UPDATE SKIP LOCKED`, so concurrent moderators never wait
on each other and never get the same item. A claim carries a lease: when it
runs out, the next claim anywhere returns the item to the queue (an `expire`
audit row) and it can be claimed again. Times come from the database clock
only, so moderators' machines may disagree about the time without harm.

Every claim, renewal, release, expiry and decision appends a row to
`review_audit`, in the same transaction as the change it records; the table
refuses UPDATE, DELETE and TRUNCATE (migration 0003).

Moderator accounts live in `moderators`, with Argon2id password hashes
(argon2-cffi's defaults, the RFC 9106 low-memory profile).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from worker.config import MODERATOR_NAME, REVIEW_ORDERS
from worker.errors import (
    ItemAlreadyDecided,
    ItemHeldByOther,
    ItemNotClaimed,
    ItemNotFound,
    LeaseExpired,
    ModeratorExists,
    ReviewError,
    UnknownModerator,
)
from worker.persistence import translated

__all__ = [
    "ACTIONS",
    "DECISIONS",
    "LABELS",
    "MAX_NOTE_CHARS",
    "MIN_PASSWORD_CHARS",
    "STATUSES",
    "AuditEntry",
    "ExportCounts",
    "Item",
    "Moderator",
    "QueueStats",
    "add_moderator",
    "authenticate",
    "claim",
    "claim_next",
    "decide",
    "disable_moderator",
    "expire_leases",
    "export_labels",
    "get_item",
    "get_moderator",
    "held_by",
    "history",
    "list_items",
    "release",
    "release_all",
    "require_moderator",
    "set_password",
    "stats",
    "thumbnail",
]

DECISIONS = ("confirmed_mismatch", "not_a_mismatch", "escalate")
STATUSES = ("pending", "claimed", "decided")
ACTIONS = ("claim", "renew", "release", "expire", "decide")
LABELS = {"confirmed_mismatch": 0, "not_a_mismatch": 1}
"""Calibration labels (1 = image and caption match); `escalate` gives no label."""
MAX_NOTE_CHARS = 2000
MIN_PASSWORD_CHARS = 12
_ORDER_BY = {"score": "score, id", "age": "created_at, id"}

_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("itmguard: no such moderator")

_ITEM_NAMES = (
    "id", "post_id", "model_id", "score", "threshold", "status", "created_at", "event_time",
    "caption", "image_url", "claimed_by", "claimed_at", "lease_expires_at", "decision",
    "decided_by", "decided_at", "note",
)


def _columns(alias: str = "") -> str:
    """The columns an `Item` is built from; `thumbnail` only as whether there is one."""
    prefix = f"{alias}." if alias else ""
    names = [prefix + name for name in _ITEM_NAMES]
    return ", ".join([*names, f"{prefix}thumbnail IS NOT NULL AS has_thumbnail"])


_ITEM_COLUMNS = _columns()


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

    @classmethod
    def _from_row(cls, row: sa.Row[Any]) -> Item:
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
    """One row of an item's audit history."""

    id: int
    item_id: int
    action: str
    moderator: str
    decision: str | None
    note: str | None
    lease_expires_at: datetime | None
    at: datetime


@dataclass(frozen=True)
class QueueStats:
    """What the queue holds now: available, leased, decided by type, oldest waiting."""

    pending: int
    claimed: int
    expired_leases: int
    decided: dict[str, int]
    oldest_pending_age_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "claimed": self.claimed,
            "expired_leases": self.expired_leases,
            "decided": dict(self.decided),
            "decided_total": sum(self.decided.values()),
            "oldest_pending_age_s": self.oldest_pending_age_s,
        }


@dataclass(frozen=True)
class Moderator:
    """A moderator account."""

    username: str
    password_hash: str = field(repr=False)
    created_at: datetime
    disabled: bool


@dataclass
class ExportCounts:
    """What `export_labels` wrote and what it left out, and why."""

    written: int = 0
    escalated: int = 0
    superseded: int = 0
    conflicts: int = 0
    unusable: int = 0


def _audit(conn: sa.Connection, item_id: int, action: str, moderator: str, *,
           decision: str | None = None, note: str | None = None,
           lease_expires_at: datetime | None = None) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO review_audit (item_id, action, moderator, decision, note, "
            "lease_expires_at) VALUES (:item_id, :action, :moderator, :decision, :note, :lease)"
        ),
        {"item_id": item_id, "action": action, "moderator": moderator, "decision": decision,
         "note": note, "lease": lease_expires_at},
    )


def _expire(conn: sa.Connection) -> int:
    """Return every expired lease nobody is touching to the queue, with an audit row each."""
    result = conn.execute(sa.text(
        """
        WITH expired AS (
            SELECT id, claimed_by, lease_expires_at FROM review_items
            WHERE status = 'claimed' AND lease_expires_at <= now()
            FOR UPDATE SKIP LOCKED
        ), returned AS (
            UPDATE review_items r
            SET status = 'pending', claimed_by = NULL, claimed_at = NULL, lease_expires_at = NULL
            FROM expired e WHERE r.id = e.id
            RETURNING e.id, e.claimed_by, e.lease_expires_at
        )
        INSERT INTO review_audit (item_id, action, moderator, lease_expires_at)
        SELECT id, 'expire', claimed_by, lease_expires_at FROM returned
        """
    ))
    return result.rowcount or 0


def _lease(conn: sa.Connection, item_id: int, moderator: str, lease_s: float) -> Item:
    row = conn.execute(
        sa.text(
            "UPDATE review_items SET status = 'claimed', claimed_by = :m, claimed_at = now(), "
            "lease_expires_at = now() + make_interval(secs => :lease) "
            f"WHERE id = :id RETURNING {_ITEM_COLUMNS}"
        ),
        {"id": item_id, "m": moderator, "lease": lease_s},
    ).one()
    return Item._from_row(row)


def _locked(conn: sa.Connection, item_id: int) -> tuple[Item, datetime]:
    row = conn.execute(
        sa.text(f"SELECT {_ITEM_COLUMNS}, now() AS now FROM review_items "
                "WHERE id = :id FOR UPDATE"),
        {"id": item_id},
    ).one_or_none()
    if row is None:
        raise ItemNotFound(item_id)
    item = Item._from_row(row)
    if item.status == "decided":
        assert item.decision is not None and item.decided_by is not None
        raise ItemAlreadyDecided(item_id, decision=item.decision, by=item.decided_by)
    return item, row.now


def claim_next(engine: sa.Engine, moderator: str, *, lease_s: float,
               order: str = "score") -> Item | None:
    """Claim the next item for `moderator`, or return the one they already hold.

    Expired leases go back to the queue first. A moderator who holds a live
    lease gets that item again, its lease renewed, so reloading a page or
    running `next` twice never hoards items. Otherwise the next pending item
    by `order` is taken: `score` (lowest match probability, the most confident
    mismatch, first) or `age` (oldest first).

    Returns:
        The claimed item, or None when nothing is pending.

    Raises:
        DatabaseUnavailable: the database could not be reached; nothing changed.
    """
    if order not in REVIEW_ORDERS:
        raise ValueError(f"order must be one of {', '.join(REVIEW_ORDERS)}")
    with translated(), engine.begin() as conn:
        _expire(conn)
        held = conn.execute(
            sa.text(
                "SELECT id FROM review_items WHERE status = 'claimed' AND claimed_by = :m "
                "AND lease_expires_at > now() ORDER BY claimed_at, id LIMIT 1 FOR UPDATE"
            ),
            {"m": moderator},
        ).scalar_one_or_none()
        if held is not None:
            item = _lease(conn, held, moderator, lease_s)
            _audit(conn, item.id, "renew", moderator, lease_expires_at=item.lease_expires_at)
            return item
        row = conn.execute(
            sa.text(
                f"""
                WITH next AS (
                    SELECT id FROM review_items WHERE status = 'pending'
                    ORDER BY {_ORDER_BY[order]} LIMIT 1 FOR UPDATE SKIP LOCKED
                )
                UPDATE review_items r
                SET status = 'claimed', claimed_by = :m, claimed_at = now(),
                    lease_expires_at = now() + make_interval(secs => :lease)
                FROM next WHERE r.id = next.id
                RETURNING {_columns("r")}
                """
            ),
            {"m": moderator, "lease": lease_s},
        ).one_or_none()
        if row is None:
            return None
        item = Item._from_row(row)
        _audit(conn, item.id, "claim", moderator, lease_expires_at=item.lease_expires_at)
        return item


def claim(engine: sa.Engine, item_id: int, moderator: str, *, lease_s: float) -> Item:
    """Claim item `item_id` for `moderator`, or renew the lease they hold on it.

    An expired lease of someone else's is ended first (an `expire` audit row).

    Raises:
        ItemNotFound: no such item.
        ItemAlreadyDecided: the item has its decision.
        ItemHeldByOther: another moderator's lease on it is still running.
        DatabaseUnavailable: the database could not be reached; nothing changed.
    """
    with translated(), engine.begin() as conn:
        item, now = _locked(conn, item_id)
        if item.status == "claimed":
            holder, until = item.claimed_by, item.lease_expires_at
            assert holder is not None and until is not None
            if until > now:
                if holder != moderator:
                    raise ItemHeldByOther(item_id, holder=holder, until=until)
                item = _lease(conn, item_id, moderator, lease_s)
                _audit(conn, item_id, "renew", moderator, lease_expires_at=item.lease_expires_at)
                return item
            _audit(conn, item_id, "expire", holder, lease_expires_at=until)
        item = _lease(conn, item_id, moderator, lease_s)
        _audit(conn, item_id, "claim", moderator, lease_expires_at=item.lease_expires_at)
        return item


def release(engine: sa.Engine, item_id: int, moderator: str) -> None:
    """Give item `item_id` back to the queue undecided.

    Raises:
        ItemNotFound: no such item.
        ItemAlreadyDecided: the item has its decision.
        ItemHeldByOther: another moderator holds it.
        ItemNotClaimed: nobody holds it, or another moderator's lease on it ran out.
        DatabaseUnavailable: the database could not be reached; nothing changed.
    """
    with translated(), engine.begin() as conn:
        item, now = _locked(conn, item_id)
        _check_holder(item, moderator, now, expired_ok=True)
        _return(conn, item_id)
        _audit(conn, item_id, "release", moderator, lease_expires_at=item.lease_expires_at)


def release_all(engine: sa.Engine, moderator: str) -> list[int]:
    """Give back every item `moderator` holds (end of a shift). Returns their ids."""
    with translated(), engine.begin() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, lease_expires_at FROM review_items WHERE status = 'claimed' "
                "AND claimed_by = :m ORDER BY id FOR UPDATE"
            ),
            {"m": moderator},
        ).all()
        for row in rows:
            _return(conn, row.id)
            _audit(conn, row.id, "release", moderator, lease_expires_at=row.lease_expires_at)
    return [row.id for row in rows]


def _return(conn: sa.Connection, item_id: int) -> None:
    conn.execute(
        sa.text(
            "UPDATE review_items SET status = 'pending', claimed_by = NULL, claimed_at = NULL, "
            "lease_expires_at = NULL WHERE id = :id"
        ),
        {"id": item_id},
    )


def _check_holder(item: Item, moderator: str, now: datetime, *, expired_ok: bool) -> None:
    if item.status != "claimed":
        raise ItemNotClaimed(item.id, moderator)
    assert item.claimed_by is not None and item.lease_expires_at is not None
    live = item.lease_expires_at > now
    if item.claimed_by != moderator:
        if live:
            raise ItemHeldByOther(item.id, holder=item.claimed_by, until=item.lease_expires_at)
        raise ItemNotClaimed(item.id, moderator)
    if not live and not expired_ok:
        raise LeaseExpired(item.id, moderator, expired_at=item.lease_expires_at)


def decide(engine: sa.Engine, item_id: int, moderator: str, decision: str,
           note: str | None = None) -> Item:
    """Record `moderator`'s decision on item `item_id`, which they must hold with a live lease.

    Args:
        decision: `confirmed_mismatch`, `not_a_mismatch` or `escalate`.
        note: optional free text for other moderators, at most 2,000 characters.

    Raises:
        ReviewError: the decision or the note is not acceptable.
        ItemNotFound: no such item.
        ItemAlreadyDecided: the item has its decision; decisions are final.
        ItemHeldByOther: another moderator holds it.
        LeaseExpired: the moderator's lease ran out; claim the item again.
        ItemNotClaimed: the moderator does not hold it.
        DatabaseUnavailable: the database could not be reached; nothing changed.
    """
    if decision not in DECISIONS:
        raise ReviewError(item_id, f"decision must be one of {', '.join(DECISIONS)}")
    note = _clean_note(item_id, note)
    with translated(), engine.begin() as conn:
        item, now = _locked(conn, item_id)
        _check_holder(item, moderator, now, expired_ok=False)
        row = conn.execute(
            sa.text(
                "UPDATE review_items SET status = 'decided', decision = :d, decided_by = :m, "
                "decided_at = now(), note = :note, claimed_by = NULL, claimed_at = NULL, "
                f"lease_expires_at = NULL WHERE id = :id RETURNING {_ITEM_COLUMNS}"
            ),
            {"id": item_id, "d": decision, "m": moderator, "note": note},
        ).one()
        _audit(conn, item_id, "decide", moderator, decision=decision, note=note,
               lease_expires_at=item.lease_expires_at)
        return Item._from_row(row)


def _clean_note(item_id: int, note: str | None) -> str | None:
    if note is None or not note.strip():
        return None
    note = note.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise ReviewError(item_id, f"a note is at most {MAX_NOTE_CHARS} characters")
    if "\x00" in note or any(0xD800 <= ord(c) <= 0xDFFF for c in note):
        raise ReviewError(item_id, "a note cannot contain NUL or unpaired surrogate characters")
    return note


def expire_leases(engine: sa.Engine) -> int:
    """Return every expired lease to the queue now; returns how many were returned."""
    with translated(), engine.begin() as conn:
        return _expire(conn)


def get_item(engine: sa.Engine, item_id: int) -> Item:
    """Item `item_id` as it is now.

    Raises:
        ItemNotFound: no such item.
    """
    with translated(), engine.connect() as conn:
        row = conn.execute(
            sa.text(f"SELECT {_ITEM_COLUMNS} FROM review_items WHERE id = :id"), {"id": item_id}
        ).one_or_none()
    if row is None:
        raise ItemNotFound(item_id)
    return Item._from_row(row)


def thumbnail(engine: sa.Engine, item_id: int) -> bytes | None:
    """The stored JPEG thumbnail of item `item_id` (inline images only), or None."""
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
                f"SELECT {_ITEM_COLUMNS} FROM review_items WHERE status = 'claimed' "
                "AND claimed_by = :m AND lease_expires_at > now() ORDER BY claimed_at, id"
            ),
            {"m": moderator},
        ).all()
    return [Item._from_row(r) for r in rows]


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
                "SELECT id, item_id, action, moderator, decision, note, lease_expires_at, at "
                "FROM review_audit WHERE item_id = :id ORDER BY id"
            ),
            {"id": item_id},
        ).all()
    return [AuditEntry(**r._mapping) for r in rows]


def list_items(engine: sa.Engine, *, status: str | None = None, decision: str | None = None,
               moderator: str | None = None, model_id: str | None = None,
               text: str | None = None, limit: int = 50, offset: int = 0) -> list[Item]:
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
                f"SELECT {_ITEM_COLUMNS} FROM review_items WHERE {' AND '.join(where)} "
                "ORDER BY created_at DESC, id DESC LIMIT :limit OFFSET :offset"
            ),
            params,
        ).all()
    return [Item._from_row(r) for r in rows]


def stats(engine: sa.Engine) -> QueueStats:
    """Counts of the queue now; an item whose lease ran out counts as pending."""
    counts = ", ".join(
        f"count(*) FILTER (WHERE decision = '{d}') AS {d}" for d in DECISIONS
    )
    with translated(), engine.connect() as conn:
        row = conn.execute(sa.text(
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
        )).one()
    return QueueStats(
        pending=row.pending,
        claimed=row.claimed,
        expired_leases=row.expired,
        decided={d: getattr(row, d) for d in DECISIONS},
        oldest_pending_age_s=None if row.oldest is None else round(float(row.oldest), 3),
    )


def export_labels(engine: sa.Engine, out: TextIO, *, model_id: str | None = None) -> ExportCounts:
    """Write decided items as labelled post events for `itmguard calibrate --labelled`.

    One JSON line per post: the post event (`post_id`, `caption`, `image` with
    the URL, or the stored thumbnail as base64 `data`, `created_at`) plus
    `label`: 0 for `confirmed_mismatch`, 1 for `not_a_mismatch`. Escalated
    items carry no label and are left out. A post reviewed under several
    models keeps its latest decision; when its decisions disagree it counts
    as a conflict. `metadata.review` says where each label came from.
    """
    counts = ExportCounts()
    where = "status = 'decided'"
    params: dict[str, Any] = {}
    if model_id is not None:
        where += " AND model_id = :model_id"
        params["model_id"] = model_id
    with translated(), engine.connect() as conn:
        counts.escalated = conn.execute(
            sa.text(f"SELECT count(*) FROM review_items WHERE {where} AND decision = 'escalate'"),
            params,
        ).scalar_one()
        rows = conn.execution_options(yield_per=500).execute(
            sa.text(
                "SELECT id, post_id, model_id, score, threshold, caption, image_url, thumbnail, "
                f"event_time, decision, decided_at FROM review_items WHERE {where} "
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
    event["metadata"] = {"review": {
        "item_id": row.id, "model_id": row.model_id, "score": row.score,
        "threshold": row.threshold, "decision": row.decision,
        "decided_at": row.decided_at.isoformat(),
        "image_source": "url" if "url" in image else "thumbnail",
    }}
    event["label"] = LABELS[row.decision]
    return event


# --- moderator accounts -------------------------------------------------------------------


def _check_username(username: str) -> None:
    if not MODERATOR_NAME.fullmatch(username):
        raise ReviewError(
            None, "a moderator name is 1-64 letters, digits, '.', '_', '@' or '-', "
                  "starting with a letter or digit"
        )


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ReviewError(None, f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > 1024 or "\x00" in password:
        raise ReviewError(None, "a password is at most 1024 characters, without NUL")


def add_moderator(engine: sa.Engine, username: str, password: str) -> Moderator:
    """Create an enabled moderator account, storing only an Argon2id hash of `password`.

    Raises:
        ReviewError: the name or the password is not acceptable.
        ModeratorExists: the name is taken.
    """
    _check_username(username)
    _check_password(password)
    hashed = _HASHER.hash(password)
    try:
        with translated(), engine.begin() as conn:
            row = conn.execute(
                sa.text(
                    "INSERT INTO moderators (username, password_hash) VALUES (:u, :h) "
                    "RETURNING username, password_hash, created_at, disabled"
                ),
                {"u": username, "h": hashed},
            ).one()
    except sa.exc.IntegrityError as exc:
        raise ModeratorExists(username) from exc
    return Moderator(**row._mapping)


def set_password(engine: sa.Engine, username: str, password: str) -> None:
    """Replace `username`'s password; their web sessions end.

    Raises:
        ReviewError: the password is not acceptable.
        UnknownModerator: no such account.
    """
    _check_password(password)
    hashed = _HASHER.hash(password)
    with translated(), engine.begin() as conn:
        result = conn.execute(
            sa.text("UPDATE moderators SET password_hash = :h WHERE username = :u"),
            {"u": username, "h": hashed},
        )
    if not result.rowcount:
        raise UnknownModerator(username)


def disable_moderator(engine: sa.Engine, username: str, *, disabled: bool = True) -> list[int]:
    """Disable (or re-enable) an account; a disabled moderator's held items go back to the queue.

    Returns the ids of the items released.

    Raises:
        UnknownModerator: no such account.
    """
    with translated(), engine.begin() as conn:
        result = conn.execute(
            sa.text("UPDATE moderators SET disabled = :d WHERE username = :u"),
            {"u": username, "d": disabled},
        )
    if not result.rowcount:
        raise UnknownModerator(username)
    return release_all(engine, username) if disabled else []


def get_moderator(engine: sa.Engine, username: str) -> Moderator | None:
    """The account named `username`, enabled or not, or None."""
    with translated(), engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT username, password_hash, created_at, disabled FROM moderators "
                "WHERE username = :u"
            ),
            {"u": username},
        ).one_or_none()
    return None if row is None else Moderator(**row._mapping)


def require_moderator(engine: sa.Engine, username: str | None) -> Moderator:
    """The enabled account named `username`.

    Raises:
        UnknownModerator: no such account, or it is disabled.
    """
    moderator = None if username is None else get_moderator(engine, username)
    if moderator is None or moderator.disabled:
        raise UnknownModerator(username or "")
    return moderator


def authenticate(engine: sa.Engine, username: str, password: str) -> Moderator | None:
    """The enabled account when `password` is right, else None.

    Unknown and disabled names cost the same hash check as a wrong password,
    so response times do not tell which names exist. A hash made with weaker
    parameters than today's is replaced on success.
    """
    moderator = get_moderator(engine, username) if MODERATOR_NAME.fullmatch(username) else None
    hashed = moderator.password_hash if moderator is not None else _DUMMY_HASH
    try:
        _HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return None
    if moderator is None or moderator.disabled:
        return None
    if _HASHER.check_needs_rehash(hashed):
        set_password(engine, username, password)
        moderator = get_moderator(engine, username)
    return moderator
