"""The review queue in a real Postgres: claims, leases, decisions, audit, labels, accounts."""

from __future__ import annotations

import base64
import io
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command

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
from worker.messages import validator
from worker.persistence import alembic_config, create_engine, write_outcomes
from worker.review.accounts import (
    add_moderator,
    authenticate,
    disable_moderator,
    require_moderator,
    set_password,
)
from worker.review.items import DECISIONS, get_item, history, list_items, stats, thumbnail
from worker.review.labels import export_labels
from worker.review.queue import claim, claim_next, decide, expire_leases, release, release_all
from worker.verdicts import Outcome, Record, ReviewContent, Verdict

pytestmark = pytest.mark.integration

LEASE = 300.0


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine on the test's fresh database."""
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


def insert_items(
    engine: sa.Engine, n: int, *, seed: int = 0, prefix: str = "p", model_id: str = "m@1"
) -> list[int]:
    """`n` pending review items inserted directly, with random scores and distinct ages."""
    rng = random.Random(seed)
    rows = [
        {
            "post_id": f"{prefix}-{i:05d}",
            "model_id": model_id,
            "score": rng.random() * 0.5,
            "caption": f"caption {i}",
            "age": n - i,
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO review_items (post_id, model_id, score, threshold, status, "
                "created_at, caption, image_url) VALUES (:post_id, :model_id, :score, 0.5, "
                "'pending', now() - make_interval(secs => :age), :caption, "
                "'https://img.example/' || :post_id || '.jpg')"
            ),
            rows,
        )
        ids = conn.execute(sa.text("SELECT id FROM review_items ORDER BY id")).scalars().all()
    return list(ids)


def expire_lease(engine: sa.Engine, item_id: int) -> None:
    """Move an item's lease into the past, as if its moderator had walked away."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE review_items SET lease_expires_at = now() - interval '1 second', "
                "claimed_at = now() - interval '10 minutes' WHERE id = :id"
            ),
            {"id": item_id},
        )


def actions(engine: sa.Engine, item_id: int) -> list[tuple[str, str, str | None]]:
    return [(e.action, e.moderator, e.decision) for e in history(engine, item_id)]


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


def test_export_labels_writes_calibration_lines(engine: sa.Engine) -> None:
    """Decisions become labelled post events; escalations are left out, conflicts counted."""
    from PIL import Image

    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(jpeg, format="JPEG")
    posts = [
        ("url-post", "https://img.example/a.jpg", None, "m@1"),
        ("thumb-post", None, jpeg.getvalue(), "m@1"),
        ("escalated", "https://img.example/c.jpg", None, "m@1"),
        ("twice", "https://img.example/d.jpg", None, "m@1"),
        ("twice", "https://img.example/d.jpg", None, "m@2"),
    ]
    outcomes = [
        Outcome(
            Record(b"", topic="posts"),
            Verdict(post, model, 0.1, 0.5, "mismatch", None, now, now),  # type: ignore[arg-type]
            None,
            ReviewContent(f"caption of {post}", url, thumb),
        )
        for post, url, thumb, model in posts
    ]
    for outcome in outcomes:
        write_outcomes(engine, [outcome])
    decisions = [
        "confirmed_mismatch",
        "not_a_mismatch",
        "escalate",
        "confirmed_mismatch",
        "not_a_mismatch",
    ]
    for item, decision in zip(list_items(engine)[::-1], decisions, strict=True):
        claim(engine, item.id, "alice", lease_s=LEASE)
        decide(engine, item.id, "alice", decision)
    out = io.StringIO()
    counts = export_labels(engine, out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    by_post = {line["post_id"]: line for line in lines}
    assert (counts.written, counts.escalated, counts.superseded, counts.conflicts) == (3, 1, 1, 1)
    assert by_post["url-post"]["label"] == 0 and by_post["url-post"]["image"] == {
        "url": "https://img.example/a.jpg"
    }
    assert by_post["thumb-post"]["label"] == 1
    assert base64.b64decode(by_post["thumb-post"]["image"]["data"]) == jpeg.getvalue()
    assert (
        by_post["twice"]["label"] == 1
        and by_post["twice"]["metadata"]["review"]["model_id"] == "m@2"
    )
    for line in lines:
        validator("post-event.v1").validate({k: v for k, v in line.items() if k != "label"})
    only_m1 = io.StringIO()
    assert export_labels(engine, only_m1, model_id="m@1").written == 3
    assert '"twice"' in only_m1.getvalue() and '"label": 0' in only_m1.getvalue()


def test_moderator_accounts_store_only_a_hash(engine: sa.Engine) -> None:
    """An account keeps an Argon2id hash; sign-in checks it and refuses wrong or disabled ones."""
    add_moderator(engine, "alice", "correct horse battery")
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT password_hash FROM moderators")).scalar_one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert authenticate(engine, "alice", "correct horse battery") is not None
    assert authenticate(engine, "alice", "wrong horse battery") is None
    assert authenticate(engine, "nobody", "correct horse battery") is None
    with pytest.raises(ModeratorExists):
        add_moderator(engine, "alice", "another long password")
    with pytest.raises(ReviewError, match="at least 12"):
        add_moderator(engine, "bob", "short")
    with pytest.raises(ReviewError, match="moderator name"):
        add_moderator(engine, "bob smith", "long enough password")
    set_password(engine, "alice", "a brand new password")
    assert authenticate(engine, "alice", "correct horse battery") is None
    assert authenticate(engine, "alice", "a brand new password") is not None


def test_disabling_a_moderator_releases_their_items(engine: sa.Engine) -> None:
    """A disabled account cannot sign in or act, and what it held returns to the queue."""
    (item_id,) = insert_items(engine, 1)
    add_moderator(engine, "alice", "correct horse battery")
    claim(engine, item_id, "alice", lease_s=LEASE)
    assert disable_moderator(engine, "alice") == [item_id]
    assert get_item(engine, item_id).status == "pending"
    assert authenticate(engine, "alice", "correct horse battery") is None
    with pytest.raises(UnknownModerator, match="add-moderator alice"):
        require_moderator(engine, "alice")
    with pytest.raises(UnknownModerator):
        disable_moderator(engine, "nobody")


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


# --- concurrency ---------------------------------------------------------------------------

ITEMS = 2000
MODERATORS = 20
DYING = 3
SHORT_LEASE = 1.0


def _moderator_loop(
    url: str,
    name: str,
    *,
    die_after: int | None,
    seed: int,
    deadline: float,
    drained: threading.Event,
    tally: Counter[str],
    lock: threading.Lock,
) -> None:
    """One moderator on its own connection: claim, decide, sometimes dawdle past the lease."""
    rng = random.Random(seed)
    engine = sa.create_engine(url, pool_size=1, max_overflow=0)
    local: Counter[str] = Counter()
    try:
        while not drained.is_set() and time.monotonic() < deadline:
            item = claim_next(engine, name, lease_s=SHORT_LEASE)
            if item is None:
                local["empty_polls"] += 1
                with engine.connect() as conn:
                    left = conn.execute(
                        sa.text("SELECT count(*) FROM review_items WHERE status <> 'decided'")
                    ).scalar_one()
                if left == 0:
                    drained.set()
                    break
                # What is left is leased. A lease lapses on the database's clock, which
                # nothing in this process can wait on, so poll it; every moderator stops
                # the moment one of them sees the queue drained.
                drained.wait(0.05)
                continue
            local["claims"] += 1
            if die_after is not None and local["claims"] >= die_after:
                local["died_holding"] += 1
                return  # walks away holding the item; its lease must lapse
            if rng.random() < 0.01:
                # part of the scenario, not a wait on another thread: a slow moderator
                # dawdles past the lease, so their decision must be refused
                time.sleep(SHORT_LEASE + 0.3)
            try:
                decide(engine, item.id, name, rng.choice(DECISIONS))
                local["decisions"] += 1
            except LeaseExpired:
                local["lost_lease_expired"] += 1
            except ItemHeldByOther:
                local["lost_reclaimed"] += 1
            except ItemNotClaimed:
                local["lost_returned"] += 1
            except ItemAlreadyDecided:
                local["lost_decided_by_other"] += 1
    except Exception as exc:  # noqa: BLE001 - surfaced by the test, not lost in a thread
        local[f"crashed: {exc!r}"] += 1
    finally:
        engine.dispose()
        with lock:
            tally.update(local)


def test_twenty_moderators_drain_two_thousand_items(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """20 concurrent moderators, 3 of whom die holding items, decide each of 2,000 items once."""
    insert_items(engine, ITEMS, seed=7)
    tally: Counter[str] = Counter()
    lock = threading.Lock()
    drained = threading.Event()
    start = time.monotonic()
    deadline = start + 60
    threads = [
        threading.Thread(
            target=_moderator_loop,
            args=(database_url, f"mod{i:02d}"),
            kwargs={
                "die_after": 5 + 7 * i if i < DYING else None,
                "seed": i,
                "deadline": deadline,
                "drained": drained,
                "tally": tally,
                "lock": lock,
            },
        )
        for i in range(MODERATORS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, deadline + 5 - time.monotonic()))
    elapsed = time.monotonic() - start
    assert not any(t.is_alive() for t in threads), "moderators still running after 60 s"
    assert not [k for k in tally if k.startswith("crashed")], tally

    with engine.connect() as conn:
        statuses = dict(
            conn.execute(sa.text("SELECT status, count(*) FROM review_items GROUP BY status")).all()
        )
        audit = conn.execute(
            sa.text(
                "SELECT item_id, action, moderator, lease_expires_at, at FROM review_audit "
                "ORDER BY item_id, id"
            )
        ).all()
    assert statuses == {"decided": ITEMS}

    per_item: dict[int, list[sa.Row]] = defaultdict(list)
    for row in audit:
        per_item[row.item_id].append(row)
    assert len(per_item) == ITEMS
    for item_id, events in per_item.items():
        holder, lease, decided, returned_at = None, None, 0, None
        for ev in events:
            assert decided == 0, f"item {item_id}: {ev.action} after its decision"
            if ev.action == "claim":
                assert holder is None, (
                    f"item {item_id} claimed by {ev.moderator} while {holder} held it"
                )
                if returned_at is not None:
                    assert ev.at >= returned_at
                holder, lease = ev.moderator, ev.lease_expires_at
            elif ev.action == "renew":
                assert holder == ev.moderator
                lease = ev.lease_expires_at
            elif ev.action in ("release", "expire"):
                assert holder == ev.moderator
                if ev.action == "expire":
                    assert ev.at >= lease, f"item {item_id}: lease ended early"
                holder, returned_at = None, ev.at
            else:
                assert ev.action == "decide" and holder == ev.moderator
                assert ev.at <= lease, f"item {item_id} decided after the lease ran out"
                decided += 1
        assert decided == 1, f"item {item_id} decided {decided} times"

    counts = Counter(row.action for row in audit)
    assert counts["decide"] == ITEMS == tally["decisions"]
    assert counts["claim"] == tally["claims"]
    assert tally["died_holding"] == DYING
    assert counts["expire"] >= DYING, "the dead moderators' leases were never reclaimed"
    lost = sum(v for k, v in tally.items() if k.startswith("lost_"))
    assert counts["claim"] == ITEMS + counts["expire"] + counts["release"]
    assert lost + DYING == counts["expire"]
    with capsys.disabled():
        print(
            f"\n[review concurrency] {MODERATORS} moderators, {ITEMS} items in {elapsed:.1f} s: "
            f"{counts['claim'] / elapsed:.0f} claims/s, {counts['decide'] / elapsed:.0f} "
            f"decisions/s; {counts['claim']} claims, {counts['expire']} expired leases reclaimed "
            f"({DYING} from moderators who died holding an item), lost decisions: "
            f"{tally['lost_lease_expired']} lease expired, {tally['lost_reclaimed']} reclaimed by "
            f"another, {tally['lost_decided_by_other']} decided by another, "
            f"{tally['lost_returned']} returned; {tally['empty_polls']} empty polls "
            f"while leases ran; 0 double claims, 0 double decisions"
        )
    assert elapsed < 60
