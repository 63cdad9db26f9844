"""Twenty moderators racing over one queue in a real Postgres, a share of decisions drawn for a
second opinion and some undone: no item is ever claimed twice at once, and no item ends with two
standing decisions for the same opinion."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict

import pytest
import sqlalchemy as sa

from tests.support import insert_items
from worker.errors import (
    ItemAlreadyDecided,
    ItemHeldByOther,
    ItemNotClaimed,
    LeaseExpired,
    UndoRefused,
)
from worker.review.decisions import DecisionPolicy, undo
from worker.review.items import DECISIONS
from worker.review.queue import claim_next, decide

pytestmark = pytest.mark.integration


ITEMS = 2000


MODERATORS = 20


DYING = 3


SHORT_LEASE = 1.0


POLICY = DecisionPolicy(reasons=("spam_scam",), second_opinion_share=0.3)
"""Three first decisions in ten go back to the queue for another moderator."""


UNDO_SHARE = 0.05
"""One decision in twenty is undone at once and made again."""


def _decide(engine: sa.Engine, item_id: int, name: str, rng: random.Random) -> None:
    decision = rng.choice(DECISIONS)
    reason = "spam_scam" if decision == "confirmed_mismatch" else None
    decide(engine, item_id, name, decision, reason=reason, policy=POLICY)


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
                _decide(engine, item.id, name, rng)
                local["decisions"] += 1
                if rng.random() < UNDO_SHARE:
                    try:
                        undo(engine, item.id, name, window_s=60, lease_s=SHORT_LEASE)
                    except (UndoRefused, ItemHeldByOther):
                        local["undo_refused"] += 1  # a second opinion was already under way
                        continue
                    local["undos"] += 1
                    _decide(engine, item.id, name, rng)
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
    """20 concurrent moderators, 3 of whom die holding items, decide each of 2,000 items: once,
    or twice by two moderators when drawn for a second opinion, undos in between."""
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
        standing: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for row in conn.execute(
            sa.text(
                "SELECT item_id, opinion, moderator FROM review_decisions "
                "WHERE undone_at IS NULL ORDER BY item_id, opinion"
            )
        ):
            standing[row.item_id].append((row.opinion, row.moderator))
    assert statuses == {"decided": ITEMS}

    per_item: dict[int, list[sa.Row]] = defaultdict(list)
    for row in audit:
        per_item[row.item_id].append(row)
    assert len(per_item) == ITEMS
    for item_id, events in per_item.items():
        holder, lease, decided, returned_at = None, None, 0, None
        for ev in events:
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
            elif ev.action == "undo":
                assert holder is None and decided > 0, f"item {item_id}: undo of nothing"
                holder, lease, decided = ev.moderator, ev.lease_expires_at, decided - 1
            else:
                assert ev.action == "decide" and holder == ev.moderator
                assert ev.at <= lease, f"item {item_id} decided after the lease ran out"
                holder, returned_at, decided = None, ev.at, decided + 1
        opinions = standing[item_id]
        assert decided == len(opinions), f"item {item_id}: audit and decisions disagree"
        assert [o for o, _ in opinions] in ([1], [1, 2]), f"item {item_id}: {opinions}"
        assert len({m for _, m in opinions}) == len(opinions), f"item {item_id}: own 2nd opinion"

    counts = Counter(row.action for row in audit)
    seconds = sum(len(o) == 2 for o in standing.values())
    assert counts["decide"] == tally["decisions"] == ITEMS + seconds + counts["undo"]
    assert counts["undo"] == tally["undos"] > 0 and seconds > 0
    assert counts["claim"] == tally["claims"]
    assert tally["died_holding"] == DYING
    assert counts["expire"] >= DYING, "the dead moderators' leases were never reclaimed"
    lost = sum(v for k, v in tally.items() if k.startswith("lost_"))
    assert lost + DYING == counts["expire"]
    with capsys.disabled():
        print(
            f"\n[review concurrency] {MODERATORS} moderators, {ITEMS} items in {elapsed:.1f} s "
            f"({seconds} with a second opinion, {counts['undo']} decisions undone): "
            f"{counts['claim'] / elapsed:.0f} claims/s, {counts['decide'] / elapsed:.0f} "
            f"decisions/s; {counts['claim']} claims, {counts['expire']} expired leases reclaimed "
            f"({DYING} from moderators who died holding an item), lost decisions: "
            f"{tally['lost_lease_expired']} lease expired, {tally['lost_reclaimed']} reclaimed by "
            f"another, {tally['lost_decided_by_other']} decided by another, "
            f"{tally['lost_returned']} returned; {tally['empty_polls']} empty polls "
            f"while leases ran; 0 double claims, 0 double decisions"
        )
    assert elapsed < 60
