"""A decision's lasting effects, and undoing one: the decision row, the second-opinion draw,
and the outbox message that carries it to the platform.

Each function here runs inside the caller's transaction, or opens one of its
own, so a decision, its audit row and its outbox message are committed together
or not at all: a decision is never published without being stored, and never
stored without its message waiting for the worker's relay (`worker.outbox`).
Every decision has an id (`review_decisions.id`); the platform deduplicates
the at-least-once deliveries on the message id and applies an undo to the
decision it names.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from worker.config import Settings
from worker.errors import ItemHeldByOther, ItemNotFound, ReviewError, UndoRefused
from worker.persistence import translated
from worker.review.items import ITEM_COLUMNS, Item
from worker.review.ledger import audit
from worker.review.origin import Origin

__all__ = ["NO_POLICY", "DecisionPolicy", "Undoable", "latest_undoable", "record", "undo"]

_SHARE_STEPS = 1_000_000


@dataclass(frozen=True)
class DecisionPolicy:
    """What a decision must carry, and how often a first decision asks for a second opinion.

    reasons: the policy categories a confirmed mismatch may name.
    require_reason: a confirmed mismatch must name one of them.
    second_opinion_share: the share (0-1) of first decisions, escalations aside, whose
        item goes back to the queue for another moderator.
    """

    reasons: tuple[str, ...] = ()
    require_reason: bool = False
    second_opinion_share: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DecisionPolicy:
        """The policy ITMGUARD_REVIEW_REASONS, _REQUIRE_REASON and _SECOND_OPINION_SHARE say."""
        return cls(
            reasons=settings.review_reasons,
            require_reason=settings.review_require_reason,
            second_opinion_share=settings.review_second_opinion_share,
        )

    def check_reason(self, item_id: int, decision: str, reason: str | None) -> str | None:
        """The reason to store with `decision`, or ReviewError saying why it is refused."""
        if not reason:
            if decision == "confirmed_mismatch" and self.require_reason:
                raise ReviewError(item_id, "a confirmed mismatch needs a reason")
            return None
        if decision != "confirmed_mismatch":
            raise ReviewError(item_id, "only a confirmed mismatch takes a reason")
        if reason not in self.reasons:
            raise ReviewError(item_id, f"reason must be one of {', '.join(self.reasons)}")
        return reason

    def draws_second_opinion(self, item: Item, decision: str) -> bool:
        """Whether this first decision sends its item back for another moderator's opinion."""
        if item.opinion != 1 or decision == "escalate" or self.second_opinion_share <= 0:
            return False
        return secrets.randbelow(_SHARE_STEPS) < self.second_opinion_share * _SHARE_STEPS


NO_POLICY = DecisionPolicy()
"""No reasons asked for, no second opinions: what a script calling the queue gets."""


def record(
    conn: sa.Connection,
    item: Item,
    moderator: str,
    decision: str,
    *,
    reason: str | None,
    note: str | None,
    policy: DecisionPolicy,
    origin: Origin | None,
) -> Item:
    """Store `moderator`'s decision on `item` (locked, held by her) and queue its message.

    A first decision drawn for a second opinion leaves the item pending for
    another moderator; every other decision decides it.
    """
    decision_id = uuid.uuid4()
    row = conn.execute(
        sa.text(
            "INSERT INTO review_decisions (id, item_id, opinion, moderator, decision, reason) "
            "VALUES (:id, :item, :opinion, :m, :d, :reason) RETURNING decided_at"
        ),
        {
            "id": decision_id,
            "item": item.id,
            "opinion": item.opinion,
            "m": moderator,
            "d": decision,
            "reason": reason,
        },
    ).one()
    if policy.draws_second_opinion(item, decision):
        update = (
            "status = 'pending', opinion = 2, decision = NULL, decided_by = NULL, "
            "decided_at = NULL, reason = NULL, note = :note"
        )
    else:
        update = (
            "status = 'decided', decision = :d, decided_by = :m, decided_at = :at, "
            "reason = :reason, note = :note"
        )
    decided = conn.execute(
        sa.text(
            f"UPDATE review_items SET {update}, claimed_by = NULL, claimed_at = NULL, "
            f"lease_expires_at = NULL WHERE id = :id RETURNING {ITEM_COLUMNS}"
        ),
        {
            "id": item.id,
            "d": decision,
            "m": moderator,
            "at": row.decided_at,
            "reason": reason,
            "note": note,
        },
    ).one()
    audit(
        conn,
        item.id,
        "decide",
        moderator,
        decision=decision,
        reason=reason,
        note=note,
        lease_expires_at=item.lease_expires_at,
        origin=origin,
    )
    _enqueue(
        conn,
        item,
        decision_id,
        item.opinion,
        "decision",
        moderator,
        decision,
        reason,
        row.decided_at,
    )
    return Item.from_row(decided)


def undo(
    engine: sa.Engine,
    item_id: int,
    moderator: str,
    *,
    window_s: float,
    lease_s: float,
    origin: Origin | None = None,
) -> Item:
    """Undo `moderator`'s latest decision on item `item_id`, within `window_s` of making it.

    The item goes back to her, claimed with a fresh lease, to decide again; a
    second opinion her decision had asked for is called off. The undo is
    audited and published like a decision.

    Raises:
        ItemNotFound: no such item.
        UndoRefused: the item's latest decision is not hers, or is older than the window.
        ItemHeldByOther: another moderator is giving the second opinion right now.
        DatabaseUnavailable: the database could not be reached; nothing changed.
    """
    with translated(), engine.begin() as conn:
        found = conn.execute(
            sa.text(
                f"SELECT {ITEM_COLUMNS}, now() AS now FROM review_items WHERE id = :id FOR UPDATE"
            ),
            {"id": item_id},
        ).one_or_none()
        if found is None:
            raise ItemNotFound(item_id)
        item, now = Item.from_row(found), found.now
        last = conn.execute(
            sa.text(
                "SELECT id, opinion, moderator, decision, reason, decided_at FROM "
                "review_decisions WHERE item_id = :id AND undone_at IS NULL "
                "ORDER BY opinion DESC LIMIT 1 FOR UPDATE"
            ),
            {"id": item_id},
        ).one_or_none()
        last = _check_undo(item, last, moderator, now, window_s)
        if item.status == "claimed":  # another's lapsed lease on the second opinion ends
            assert item.claimed_by is not None
            audit(
                conn,
                item_id,
                "expire",
                item.claimed_by,
                lease_expires_at=item.lease_expires_at,
                origin=origin,
            )
        conn.execute(
            sa.text("UPDATE review_decisions SET undone_at = now() WHERE id = :id"),
            {"id": last.id},
        )
        row = conn.execute(
            sa.text(
                "UPDATE review_items SET status = 'claimed', opinion = :opinion, "
                "claimed_by = :m, claimed_at = now(), "
                "lease_expires_at = now() + make_interval(secs => :lease), decision = NULL, "
                "decided_by = NULL, decided_at = NULL, reason = NULL "
                f"WHERE id = :id RETURNING {ITEM_COLUMNS}"
            ),
            {"id": item_id, "opinion": last.opinion, "m": moderator, "lease": lease_s},
        ).one()
        back = Item.from_row(row)
        audit(
            conn, item_id, "undo", moderator, lease_expires_at=back.lease_expires_at, origin=origin
        )
        _enqueue(
            conn,
            item,
            last.id,
            last.opinion,
            "undo",
            moderator,
            last.decision,
            last.reason,
            last.decided_at,
            undone_at=now,
        )
        return back


@dataclass(frozen=True)
class Undoable:
    """A moderator's latest decision, still inside the undo window."""

    item_id: int
    decision: str
    reason: str | None
    seconds_left: float


def latest_undoable(engine: sa.Engine, moderator: str, window_s: float) -> Undoable | None:
    """`moderator`'s most recent standing decision if she may still undo it, else None."""
    if window_s <= 0:
        return None
    with translated(), engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT item_id, decision, reason, extract(epoch FROM decided_at + "
                "make_interval(secs => :window) - now()) AS seconds_left FROM review_decisions d "
                "WHERE moderator = :m AND undone_at IS NULL "
                "AND decided_at > now() - make_interval(secs => :window) "
                "AND NOT EXISTS (SELECT 1 FROM review_decisions later WHERE later.item_id = "
                "d.item_id AND later.opinion > d.opinion AND later.undone_at IS NULL) "
                "ORDER BY decided_at DESC LIMIT 1"
            ),
            {"m": moderator, "window": window_s},
        ).one_or_none()
    if row is None:
        return None
    return Undoable(row.item_id, row.decision, row.reason, float(row.seconds_left))


def _check_undo(
    item: Item, last: sa.Row[Any] | None, moderator: str, now: datetime, window_s: float
) -> sa.Row[Any]:
    if last is None or last.moderator != moderator:
        raise UndoRefused(
            item.id, f"{moderator} has no standing decision on item {item.id} to undo"
        )
    if (now - last.decided_at).total_seconds() > window_s:
        raise UndoRefused(
            item.id,
            f"the decision on item {item.id} is older than the {window_s:g} s undo window: "
            "it is final",
        )
    held = item.status == "claimed" and item.lease_expires_at and item.lease_expires_at > now
    if held and item.claimed_by != moderator:
        assert item.claimed_by is not None and item.lease_expires_at is not None
        raise ItemHeldByOther(item.id, holder=item.claimed_by, until=item.lease_expires_at)
    return last


def _enqueue(
    conn: sa.Connection,
    item: Item,
    decision_id: uuid.UUID,
    opinion: int,
    kind: str,
    moderator: str,
    decision: str,
    reason: str | None,
    decided_at: datetime,
    *,
    undone_at: datetime | None = None,
) -> None:
    """The message of `schemas/moderation-decision.v1.json`, into the outbox."""
    message_id = uuid.uuid4()
    message = {
        "schema_version": 1,
        "message_id": str(message_id),
        "type": kind,
        "decision_id": str(decision_id),
        "item_id": item.id,
        "post_id": item.post_id,
        "model_id": item.model_id,
        "opinion": opinion,
        "decision": decision,
        "reason": reason,
        "moderator": moderator,
        "decided_at": decided_at.isoformat(),
        "undone_at": None if undone_at is None else undone_at.isoformat(),
    }
    conn.execute(
        sa.text(
            "INSERT INTO review_outbox (message_id, decision_id, key, payload) "
            "VALUES (:mid, :did, :key, :payload)"
        ),
        {
            "mid": message_id,
            "did": decision_id,
            "key": item.post_id,
            "payload": json.dumps(message, separators=(",", ":"), ensure_ascii=False),
        },
    )
