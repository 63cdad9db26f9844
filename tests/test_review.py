"""The review queue in a real Postgres: claims, leases, decisions, releases, the audit trail,
and the queue's reads (items, lists, stats)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command

from tests.support import LEASE, actions, expire_lease, insert_items
from worker.errors import (
    ItemAlreadyDecided,
    ItemHeldByOther,
    ItemNotClaimed,
    ItemNotFound,
    LeaseExpired,
    ReviewError,
)
from worker.persistence import alembic_config, write_outcomes
from worker.review.items import get_item, history, list_items, stats, thumbnail
from worker.review.queue import claim, claim_next, decide, expire_leases, release, release_all
from worker.verdicts import Outcome, Record, ReviewContent, Verdict

pytestmark = pytest.mark.integration


def test_a_mismatch_verdict_queues_a_complete_pending_item(engine: sa.Engine) -> None:
    """The worker's insert gives a pending, unclaimed item with content, score, model and times."""
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    verdict = Verdict("post-1", "m@1", 0.12, 0.5, "mismatch", None, now, now)  # type: ignore[arg-type]
    content = ReviewContent("a red circle", None, b"\xff\xd8thumb")
    write_outcomes(engine, [Outcome(Record(b"", topic="posts"), verdict, None, content)])
    (item,) = list_items(engine)
    assert (item.post_id, item.model_id, item.score, item.threshold) == ("post-1", "m@1", 0.12, 0.5)
    assert (item.status, item.caption, item.has_thumbnail, item.image_url) == (
        "pending",
        "a red circle",
        True,
        None,
    )
    assert (item.created_at, item.event_time) == (now, now)
    assert (item.claimed_by, item.decision) == (None, None)
    assert thumbnail(engine, item.id) == b"\xff\xd8thumb"


def test_claims_take_the_lowest_score_first_or_the_oldest(engine: sa.Engine) -> None:
    """`score` order claims the most confident mismatch first; `age` the oldest item."""
    ids = insert_items(engine, 30)
    with engine.connect() as conn:
        by_score = (
            conn.execute(sa.text("SELECT id FROM review_items ORDER BY score")).scalars().all()
        )
    first = claim_next(engine, "alice", lease_s=LEASE)
    second = claim_next(engine, "bob", lease_s=LEASE, order="score")
    oldest = claim_next(engine, "carol", lease_s=LEASE, order="age")
    assert first is not None and second is not None and oldest is not None
    assert [first.id, second.id] == list(by_score[:2])
    assert oldest.id == ids[0] if ids[0] not in by_score[:2] else ids[1]
    assert first.claimed_by == "alice" and first.status == "claimed"
    assert first.lease_expires_at is not None and first.claimed_at is not None
    assert 299 < (first.lease_expires_at - first.claimed_at).total_seconds() <= 300


def test_next_gives_a_moderator_the_item_they_already_hold(engine: sa.Engine) -> None:
    """Asking for the next item while holding one renews and returns the held item."""
    insert_items(engine, 5)
    held = claim_next(engine, "alice", lease_s=LEASE)
    again = claim_next(engine, "alice", lease_s=LEASE)
    assert held is not None and again is not None
    assert again.id == held.id
    assert again.lease_expires_at is not None and held.lease_expires_at is not None
    assert again.lease_expires_at >= held.lease_expires_at
    assert [a for a, _, _ in actions(engine, held.id)] == ["claim", "renew"]
    assert stats(engine).claimed == 1


def test_a_held_item_cannot_be_claimed_decided_or_released_by_another(engine: sa.Engine) -> None:
    """While alice's lease runs, bob's claim, decision and release are refused."""
    (item_id,) = insert_items(engine, 1)
    claim(engine, item_id, "alice", lease_s=LEASE)
    with pytest.raises(ItemHeldByOther) as info:
        decide(engine, item_id, "bob", "not_a_mismatch")
    assert info.value.holder == "alice" and "held by alice" in str(info.value)
    with pytest.raises(ItemHeldByOther):
        claim(engine, item_id, "bob", lease_s=LEASE)
    with pytest.raises(ItemHeldByOther):
        release(engine, item_id, "bob")
    assert claim_next(engine, "bob", lease_s=LEASE) is None
    assert get_item(engine, item_id).claimed_by == "alice"
    assert actions(engine, item_id) == [("claim", "alice", None)]


def test_a_decision_is_recorded_once_with_its_note(engine: sa.Engine) -> None:
    """A decision sets the item's outcome and writes one audit row; a second is refused."""
    (item_id,) = insert_items(engine, 1)
    claim_next(engine, "alice", lease_s=LEASE)
    item = decide(engine, item_id, "alice", "confirmed_mismatch", note="  dog, not cat ")
    assert (item.status, item.decision, item.decided_by, item.note) == (
        "decided",
        "confirmed_mismatch",
        "alice",
        "dog, not cat",
    )
    assert item.decided_at is not None and item.claimed_by is None
    with pytest.raises(ItemAlreadyDecided, match="already decided confirmed_mismatch by alice"):
        decide(engine, item_id, "alice", "escalate")
    with pytest.raises(ItemAlreadyDecided):
        claim(engine, item_id, "bob", lease_s=LEASE)
    assert actions(engine, item_id) == [
        ("claim", "alice", None),
        ("decide", "alice", "confirmed_mismatch"),
    ]
    assert history(engine, item_id)[-1].note == "dog, not cat"


def test_a_decision_needs_a_claim_and_a_known_decision(engine: sa.Engine) -> None:
    """Deciding an unclaimed item, a missing item, an unknown decision or a bad note is refused."""
    (item_id,) = insert_items(engine, 1)
    with pytest.raises(ItemNotClaimed, match="claim it first"):
        decide(engine, item_id, "alice", "escalate")
    with pytest.raises(ItemNotFound):
        decide(engine, item_id + 1000, "alice", "escalate")
    claim(engine, item_id, "alice", lease_s=LEASE)
    with pytest.raises(ReviewError, match="decision must be one of"):
        decide(engine, item_id, "alice", "delete")
    with pytest.raises(ReviewError, match="at most 2000"):
        decide(engine, item_id, "alice", "escalate", note="x" * 2001)
    with pytest.raises(ReviewError, match="NUL"):
        decide(engine, item_id, "alice", "escalate", note="a\x00b")
    assert get_item(engine, item_id).status == "claimed"


def test_an_expired_lease_returns_the_item_to_the_queue(engine: sa.Engine) -> None:
    """After alice's lease runs out, her decision is refused and bob claims the item."""
    (item_id,) = insert_items(engine, 1)
    claim_next(engine, "alice", lease_s=LEASE)
    expire_lease(engine, item_id)
    assert stats(engine).pending == 1 and stats(engine).expired_leases == 1
    with pytest.raises(LeaseExpired, match="claim it again"):
        decide(engine, item_id, "alice", "escalate")
    taken = claim_next(engine, "bob", lease_s=LEASE)
    assert taken is not None and taken.id == item_id and taken.claimed_by == "bob"
    with pytest.raises(ItemHeldByOther):
        decide(engine, item_id, "alice", "escalate")
    decide(engine, item_id, "bob", "not_a_mismatch")
    assert actions(engine, item_id) == [
        ("claim", "alice", None),
        ("expire", "alice", None),
        ("claim", "bob", None),
        ("decide", "bob", "not_a_mismatch"),
    ]


def test_expire_leases_returns_every_lapsed_claim(engine: sa.Engine) -> None:
    """The sweep returns lapsed claims only, each with an `expire` audit row."""
    a, b, _ = insert_items(engine, 3)
    claim(engine, a, "alice", lease_s=LEASE)
    claim(engine, b, "bob", lease_s=LEASE)
    expire_lease(engine, a)
    assert expire_leases(engine) == 1
    assert get_item(engine, a).status == "pending"
    assert get_item(engine, b).claimed_by == "bob"
    assert actions(engine, a)[-1] == ("expire", "alice", None)


def test_claiming_a_lapsed_item_by_id_records_the_expiry(engine: sa.Engine) -> None:
    """Claiming by id an item whose lease lapsed ends the old lease in the audit first."""
    (item_id,) = insert_items(engine, 1)
    claim(engine, item_id, "alice", lease_s=LEASE)
    expire_lease(engine, item_id)
    assert claim(engine, item_id, "bob", lease_s=LEASE).claimed_by == "bob"
    assert actions(engine, item_id) == [
        ("claim", "alice", None),
        ("expire", "alice", None),
        ("claim", "bob", None),
    ]


def test_release_gives_the_item_back(engine: sa.Engine) -> None:
    """A released item is pending again; releasing what one does not hold is refused."""
    a, b = insert_items(engine, 2)
    claim(engine, a, "alice", lease_s=LEASE)
    claim(engine, b, "alice", lease_s=LEASE)
    release(engine, a, "alice")
    assert get_item(engine, a).status == "pending"
    with pytest.raises(ItemNotClaimed):
        release(engine, a, "alice")
    assert release_all(engine, "alice") == [b]
    assert stats(engine).pending == 2
    assert actions(engine, a) == [("claim", "alice", None), ("release", "alice", None)]


def test_the_audit_table_refuses_changes(engine: sa.Engine) -> None:
    """UPDATE, DELETE and TRUNCATE on review_audit fail; the rows stay as written."""
    (item_id,) = insert_items(engine, 1)
    claim(engine, item_id, "alice", lease_s=LEASE)
    for statement in (
        "UPDATE review_audit SET moderator = 'mallory'",
        "DELETE FROM review_audit",
        "TRUNCATE review_audit",
    ):
        with pytest.raises(sa.exc.ProgrammingError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text(statement))
    assert actions(engine, item_id) == [("claim", "alice", None)]


def test_stats_count_the_queue(engine: sa.Engine) -> None:
    """Stats give pending, live claims, decisions by type and the oldest pending age."""
    ids = insert_items(engine, 6)
    for moderator, decision in (
        ("a", "confirmed_mismatch"),
        ("b", "confirmed_mismatch"),
        ("c", "escalate"),
    ):
        item = claim_next(engine, moderator, lease_s=LEASE, order="age")
        assert item is not None
        decide(engine, item.id, moderator, decision)
    claim(engine, ids[5], "d", lease_s=LEASE)
    got = stats(engine)
    assert (got.pending, got.claimed, got.expired_leases) == (2, 1, 0)
    assert got.decided == {"confirmed_mismatch": 2, "not_a_mismatch": 0, "escalate": 1}
    assert got.oldest_pending_age_s is not None and 2.5 < got.oldest_pending_age_s < 60
    assert got.to_dict()["decided_total"] == 3


def test_list_filters_by_status_decision_moderator_model_and_text(engine: sa.Engine) -> None:
    """Each filter narrows the list; caption search treats % and _ literally."""
    ids = insert_items(engine, 4)
    insert_items(engine, 1, prefix="q", model_id="m@2")
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE review_items SET caption = '100% _cat_' WHERE id = :id"), {"id": ids[2]}
        )
    claim(engine, ids[0], "alice", lease_s=LEASE)
    decide(engine, ids[0], "alice", "escalate")
    claim(engine, ids[1], "bob", lease_s=LEASE)
    assert [i.id for i in list_items(engine, status="decided")] == [ids[0]]
    assert [i.id for i in list_items(engine, status="claimed")] == [ids[1]]
    assert len(list_items(engine, status="pending")) == 3
    assert [i.id for i in list_items(engine, decision="escalate")] == [ids[0]]
    assert [i.id for i in list_items(engine, moderator="bob")] == [ids[1]]
    assert [i.post_id for i in list_items(engine, model_id="m@2")] == ["q-00000"]
    assert [i.id for i in list_items(engine, text="0% _CAT")] == [ids[2]]
    assert list_items(engine, text="%") == [get_item(engine, ids[2])]
    assert len(list_items(engine, limit=2, offset=4)) == 1


def test_downgrade_refuses_to_drop_the_audit_trail(database_url: str, engine: sa.Engine) -> None:
    """Migration 0003 downgrades on an unused queue but refuses once audit rows exist."""
    config = alembic_config(database_url)
    command.downgrade(config, "0002")
    command.upgrade(config, "head")
    (item_id,) = insert_items(engine, 1)
    claim(engine, item_id, "alice", lease_s=LEASE)
    with pytest.raises(RuntimeError, match="append-only audit trail"):
        command.downgrade(config, "0002")
    assert actions(engine, item_id) == [("claim", "alice", None)]
