"""The queue's writes: claim with a lease, renew, release, expire, decide.

Every function takes a SQLAlchemy Engine and runs one short transaction, so
the CLI, the web page and tests share the same rules. Claims take the next
pending row with `FOR UPDATE SKIP LOCKED`, so concurrent moderators never wait
on each other and never get the same item. A claim carries a lease: when it
runs out, the next claim anywhere returns the item to the queue (an `expire`
audit row) and it can be claimed again. Times come from the database clock
only, so moderators' machines may disagree about the time without harm.

Every claim, renewal, release, expiry and decision appends a row to
`review_audit`, in the same transaction as the change it records; the table
refuses UPDATE, DELETE and TRUNCATE (migration 0003). Each row says whether
the step came from the web page or the CLI (`worker.review.origin`); a call
without an origin (a script using this module directly) leaves that empty.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from worker.config import REVIEW_ORDERS
from worker.errors import (
    ItemAlreadyDecided,
    ItemHeldByOther,
    ItemNotClaimed,
    ItemNotFound,
    LeaseExpired,
    OwnSecondOpinion,
    ReviewError,
)
from worker.persistence import translated
from worker.review.decisions import NO_POLICY, DecisionPolicy, record
from worker.review.items import DECISIONS, ITEM_COLUMNS, Item, item_columns
from worker.review.ledger import audit, origin_params
from worker.review.origin import Origin
from worker.review.triage import ANY_ITEM, Triage

__all__ = [
    "MAX_NOTE_CHARS",
    "claim",
    "claim_next",
    "decide",
    "expire_leases",
    "release",
    "release_all",
]

MAX_NOTE_CHARS = 2000
_ORDER_BY = {"score": "score, id", "age": "created_at, id"}


def _expire(conn: sa.Connection, origin: Origin | None) -> int:
    """Return every expired lease nobody is touching to the queue, with an audit row each."""
    result = conn.execute(
        sa.text(
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
        INSERT INTO review_audit (item_id, action, moderator, lease_expires_at, via, os_user)
        SELECT id, 'expire', claimed_by, lease_expires_at, :via, :os_user FROM returned
        """
        ),
        origin_params(origin),
    )
    return result.rowcount or 0


def _lease(conn: sa.Connection, item_id: int, moderator: str, lease_s: float) -> Item:
    row = conn.execute(
        sa.text(
            "UPDATE review_items SET status = 'claimed', claimed_by = :m, claimed_at = now(), "
            "lease_expires_at = now() + make_interval(secs => :lease) "
            f"WHERE id = :id RETURNING {ITEM_COLUMNS}"
        ),
        {"id": item_id, "m": moderator, "lease": lease_s},
    ).one()
    return Item.from_row(row)


def _locked(conn: sa.Connection, item_id: int) -> tuple[Item, datetime]:
    row = conn.execute(
        sa.text(f"SELECT {ITEM_COLUMNS}, now() AS now FROM review_items WHERE id = :id FOR UPDATE"),
        {"id": item_id},
    ).one_or_none()
    if row is None:
        raise ItemNotFound(item_id)
    item = Item.from_row(row)
    if item.status == "decided":
        assert item.decision is not None and item.decided_by is not None
        raise ItemAlreadyDecided(item_id, decision=item.decision, by=item.decided_by)
    return item, row.now


def claim_next(
    engine: sa.Engine,
    moderator: str,
    *,
    lease_s: float,
    order: str = "score",
    triage: Triage = ANY_ITEM,
    origin: Origin | None = None,
) -> Item | None:
    """Claim the next item for `moderator`, or return the one they already hold.

    Expired leases go back to the queue first. A moderator who holds a live
    lease gets that item again, its lease renewed, so reloading a page or
    running `next` twice never hoards items. Otherwise the next pending item
    that `triage` admits is taken by `order`: `score` (lowest match
    probability, the most confident mismatch, first) or `age` (oldest first).
    An item waiting for a second opinion is never given to the moderator who
    made its first decision.

    Returns:
        The claimed item, or None when nothing is pending.

    Raises:
        DatabaseUnavailable: the database could not be reached; nothing changed.
    """
    if order not in REVIEW_ORDERS:
        raise ValueError(f"order must be one of {', '.join(REVIEW_ORDERS)}")
    with translated(), engine.begin() as conn:
        _expire(conn, origin)
        held = conn.execute(
            sa.text(
                "SELECT id FROM review_items WHERE status = 'claimed' AND claimed_by = :m "
                "AND lease_expires_at > now() ORDER BY claimed_at, id LIMIT 1 FOR UPDATE"
            ),
            {"m": moderator},
        ).scalar_one_or_none()
        if held is not None:
            item = _lease(conn, held, moderator, lease_s)
            audit(
                conn,
                item.id,
                "renew",
                moderator,
                lease_expires_at=item.lease_expires_at,
                origin=origin,
            )
            return item
        where, params = triage.where()
        row = conn.execute(
            sa.text(
                f"""
                WITH next AS (
                    SELECT id FROM review_items WHERE status = 'pending' AND {where}
                    AND (opinion = 1 OR NOT EXISTS (SELECT 1 FROM review_decisions d
                        WHERE d.item_id = review_items.id AND d.moderator = :m
                        AND d.undone_at IS NULL))
                    ORDER BY {_ORDER_BY[order]} LIMIT 1 FOR UPDATE SKIP LOCKED
                )
                UPDATE review_items r
                SET status = 'claimed', claimed_by = :m, claimed_at = now(),
                    lease_expires_at = now() + make_interval(secs => :lease)
                FROM next WHERE r.id = next.id
                RETURNING {item_columns("r")}
                """
            ),
            {"m": moderator, "lease": lease_s, **params},
        ).one_or_none()
        if row is None:
            return None
        item = Item.from_row(row)
        audit(
            conn, item.id, "claim", moderator, lease_expires_at=item.lease_expires_at, origin=origin
        )
        return item


def claim(
    engine: sa.Engine,
    item_id: int,
    moderator: str,
    *,
    lease_s: float,
    origin: Origin | None = None,
) -> Item:
    """Claim item `item_id` for `moderator`, or renew the lease they hold on it.

    An expired lease of someone else's is ended first (an `expire` audit row).

    Raises:
        ItemNotFound: no such item.
        ItemAlreadyDecided: the item has its decision.
        ItemHeldByOther: another moderator's lease on it is still running.
        OwnSecondOpinion: it waits for a second opinion on the moderator's own decision.
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
                audit(
                    conn,
                    item_id,
                    "renew",
                    moderator,
                    lease_expires_at=item.lease_expires_at,
                    origin=origin,
                )
                return item
            audit(conn, item_id, "expire", holder, lease_expires_at=until, origin=origin)
        if item.opinion == 2 and _gave_first_opinion(conn, item_id, moderator):
            raise OwnSecondOpinion(item_id, moderator)
        item = _lease(conn, item_id, moderator, lease_s)
        audit(
            conn, item_id, "claim", moderator, lease_expires_at=item.lease_expires_at, origin=origin
        )
        return item


def _gave_first_opinion(conn: sa.Connection, item_id: int, moderator: str) -> bool:
    return (
        conn.execute(
            sa.text(
                "SELECT 1 FROM review_decisions WHERE item_id = :id AND moderator = :m "
                "AND opinion = 1 AND undone_at IS NULL"
            ),
            {"id": item_id, "m": moderator},
        ).first()
        is not None
    )


def release(
    engine: sa.Engine, item_id: int, moderator: str, *, origin: Origin | None = None
) -> None:
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
        audit(
            conn,
            item_id,
            "release",
            moderator,
            lease_expires_at=item.lease_expires_at,
            origin=origin,
        )


def release_all(engine: sa.Engine, moderator: str, *, origin: Origin | None = None) -> list[int]:
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
            audit(
                conn,
                row.id,
                "release",
                moderator,
                lease_expires_at=row.lease_expires_at,
                origin=origin,
            )
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


def decide(
    engine: sa.Engine,
    item_id: int,
    moderator: str,
    decision: str,
    note: str | None = None,
    *,
    reason: str | None = None,
    policy: DecisionPolicy = NO_POLICY,
    origin: Origin | None = None,
) -> Item:
    """Record `moderator`'s decision on item `item_id`, which they must hold with a live lease.

    The decision, its audit row and its message for the decisions topic are
    written in one transaction (`worker.review.decisions`). A first decision
    that `policy` draws for a second opinion returns the item to the queue,
    pending with `opinion` 2, for another moderator.

    Args:
        decision: `confirmed_mismatch`, `not_a_mismatch` or `escalate`.
        note: optional free text for other moderators, at most 2,000 characters.
        reason: the policy category of a confirmed mismatch, one of `policy.reasons`.

    Raises:
        ReviewError: the decision, the reason or the note is not acceptable.
        ItemNotFound: no such item.
        ItemAlreadyDecided: the item has its decision; decisions are final.
        ItemHeldByOther: another moderator holds it.
        LeaseExpired: the moderator's lease ran out; claim the item again.
        ItemNotClaimed: the moderator does not hold it.
        DatabaseUnavailable: the database could not be reached; nothing changed.
    """
    if decision not in DECISIONS:
        raise ReviewError(item_id, f"decision must be one of {', '.join(DECISIONS)}")
    reason = policy.check_reason(item_id, decision, reason)
    note = _clean_note(item_id, note)
    with translated(), engine.begin() as conn:
        item, now = _locked(conn, item_id)
        _check_holder(item, moderator, now, expired_ok=False)
        return record(
            conn,
            item,
            moderator,
            decision,
            reason=reason,
            note=note,
            policy=policy,
            origin=origin,
        )


def _clean_note(item_id: int, note: str | None) -> str | None:
    if note is None or not note.strip():
        return None
    note = note.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise ReviewError(item_id, f"a note is at most {MAX_NOTE_CHARS} characters")
    if "\x00" in note or any(0xD800 <= ord(c) <= 0xDFFF for c in note):
        raise ReviewError(item_id, "a note cannot contain NUL or unpaired surrogate characters")
    return note


def expire_leases(engine: sa.Engine, *, origin: Origin | None = None) -> int:
    """Return every expired lease to the queue now; returns how many were returned."""
    with translated(), engine.begin() as conn:
        return _expire(conn, origin)
