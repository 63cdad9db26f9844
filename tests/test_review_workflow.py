"""The moderators' workflow in a real Postgres: reasons, undo, second opinions, triage, the
outbox message of every decision, figures and labels."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support import LEASE, insert_items
from worker.errors import OwnSecondOpinion, ReviewError, UndoRefused
from worker.messages import validator
from worker.review.decisions import DecisionPolicy, latest_undoable, undo
from worker.review.figures import figures
from worker.review.items import get_item, history
from worker.review.labels import export_labels
from worker.review.queue import claim, claim_next, decide
from worker.review.triage import Triage, context, pending_by_band
from worker.review.wellness import DEFAULT_DISPLAY, Display, display_for, set_display

pytestmark = pytest.mark.integration

REASONS = DecisionPolicy(reasons=("spam_scam", "other_policy"), require_reason=True)
SECOND = DecisionPolicy(reasons=REASONS.reasons, second_opinion_share=1.0)


def outbox(engine: sa.Engine) -> list[dict[str, Any]]:
    """The outbox's messages in order, each checked against the decision schema."""
    check = validator("moderation-decision.v1")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT key, payload FROM review_outbox ORDER BY id")).all()
    messages = []
    for row in rows:
        message = json.loads(row.payload)
        check.validate(message)
        assert row.key == message["post_id"]
        messages.append(message)
    return messages


def test_a_confirmed_mismatch_needs_a_listed_reason(engine: sa.Engine) -> None:
    """Without a reason, with an unknown one, or with a reason on another decision, the decision
    is refused and nothing is stored or published; a listed reason is kept everywhere."""
    (item_id,) = insert_items(engine, 1)
    claim(engine, item_id, "alice", lease_s=LEASE)
    refused = [
        ("confirmed_mismatch", None),
        ("confirmed_mismatch", "hate"),
        ("not_a_mismatch", "spam_scam"),
    ]
    for decision, reason in refused:
        with pytest.raises(ReviewError):
            decide(engine, item_id, "alice", decision, reason=reason, policy=REASONS)
    assert outbox(engine) == []
    assert get_item(engine, item_id).status == "claimed"
    item = decide(
        engine, item_id, "alice", "confirmed_mismatch", reason="spam_scam", policy=REASONS
    )
    assert (item.status, item.decision, item.reason) == (
        "decided",
        "confirmed_mismatch",
        "spam_scam",
    )
    assert history(engine, item_id)[-1].reason == "spam_scam"
    (message,) = outbox(engine)
    assert (message["type"], message["reason"], message["opinion"], message["moderator"]) == (
        "decision",
        "spam_scam",
        1,
        "alice",
    )
    assert figures(engine).reasons == {"spam_scam": 1}


def test_undo_within_the_window_returns_the_item_and_is_published(engine: sa.Engine) -> None:
    """alice undoes her decision: the item is hers again, the undo audited and published with the
    decision's id; bob cannot undo it, and after the window nobody can."""
    first, second = insert_items(engine, 2)
    claim(engine, first, "alice", lease_s=LEASE)
    decide(engine, first, "alice", "not_a_mismatch")
    assert latest_undoable(engine, "alice", 60).item_id == first  # type: ignore[union-attr]
    with pytest.raises(UndoRefused):
        undo(engine, first, "bob", window_s=60, lease_s=LEASE)
    back = undo(engine, first, "alice", window_s=60, lease_s=LEASE)
    assert (back.status, back.claimed_by, back.decision) == ("claimed", "alice", None)
    assert [e.action for e in history(engine, first)] == ["claim", "decide", "undo"]
    decided, undone = outbox(engine)
    assert (undone["type"], undone["decision_id"]) == ("undo", decided["decision_id"])
    assert undone["undone_at"] is not None
    decide(engine, first, "alice", "escalate")
    claim(engine, second, "alice", lease_s=LEASE)
    decide(engine, second, "alice", "escalate")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE review_decisions SET decided_at = now() - interval '2 minutes' "
                "WHERE item_id = :id"
            ),
            {"id": second},
        )
    with pytest.raises(UndoRefused, match="final"):
        undo(engine, second, "alice", window_s=60, lease_s=LEASE)
    assert get_item(engine, second).decision == "escalate"
    assert latest_undoable(engine, "alice", 0) is None


def test_a_second_opinion_goes_to_another_moderator(engine: sa.Engine) -> None:
    """A drawn first decision returns its item for a second opinion that its own moderator can
    neither claim nor be given; bob's opinion decides it, counted and exported as agreeing."""
    ids = insert_items(engine, 2)
    plan = [(ids[1], "escalate", ""), (ids[0], "not_a_mismatch", "not_a_mismatch")]
    for item_id, first, then in plan:
        claim(engine, item_id, "alice", lease_s=LEASE)
        waiting = decide(engine, item_id, "alice", first, policy=SECOND)
        if first == "escalate":  # escalations never draw a second opinion
            assert waiting.status == "decided"
            continue
        assert (waiting.status, waiting.opinion, waiting.decision) == ("pending", 2, None)
        assert claim_next(engine, "alice", lease_s=LEASE) is None
        with pytest.raises(OwnSecondOpinion):
            claim(engine, item_id, "alice", lease_s=LEASE)
        got = claim_next(engine, "bob", lease_s=LEASE)
        assert got is not None and got.id == item_id
        done = decide(engine, item_id, "bob", then, policy=SECOND)
        assert (done.status, done.opinion, done.decided_by) == ("decided", 2, "bob")
    team = figures(engine)
    assert (team.second_opinions, team.agreed) == (1, 1)
    lines = {m.moderator: m for m in team.moderators}
    assert (lines["alice"].decisions, lines["alice"].checked, lines["alice"].agreement) == (
        2,
        1,
        1.0,
    )
    assert [m["opinion"] for m in outbox(engine)] == [1, 1, 2]
    out = io.StringIO()
    counts = export_labels(engine, out)
    assert (counts.written, counts.second_opinions, counts.agreed) == (1, 1, 1)
    review = json.loads(out.getvalue())["metadata"]["review"]
    assert review["second_opinion"] == {"first_decision": "not_a_mismatch", "agreed": True}


def test_undoing_a_first_decision_calls_its_second_opinion_off(engine: sa.Engine) -> None:
    """While her item waits for a second opinion, alice may undo her decision: it is hers again
    as a first decision; once bob holds it for his opinion, she may not."""
    (item_id,) = insert_items(engine, 1)
    claim(engine, item_id, "alice", lease_s=LEASE)
    decide(engine, item_id, "alice", "not_a_mismatch", policy=SECOND)
    back = undo(engine, item_id, "alice", window_s=60, lease_s=LEASE)
    assert (back.status, back.opinion, back.claimed_by) == ("claimed", 1, "alice")
    decide(engine, item_id, "alice", "not_a_mismatch", policy=SECOND)
    claim(engine, item_id, "bob", lease_s=LEASE)
    with pytest.raises(ReviewError, match="held by bob"):
        undo(engine, item_id, "alice", window_s=60, lease_s=LEASE)


def test_triage_claims_by_model_and_score_band(engine: sa.Engine) -> None:
    """A claim limited to one model or one score band takes only such items; the queue page's
    table counts each model's and band's pending items."""
    insert_items(engine, 10, seed=1, model_id="a@1")
    insert_items(engine, 10, seed=2, prefix="q", model_id="b@1")
    item = claim_next(engine, "alice", lease_s=LEASE, triage=Triage(model_id="b@1"))
    assert item is not None and item.model_id == "b@1"
    high = claim_next(engine, "bob", lease_s=LEASE, order="age", triage=Triage(band="high"))
    assert high is not None and high.score >= 0.3
    assert claim_next(engine, "carol", lease_s=LEASE, triage=Triage(model_id="c@1")) is None
    rows = pending_by_band(engine)
    assert sum(r["pending"] for r in rows) == 18
    assert {r["model_id"] for r in rows} == {"a@1", "b@1"}
    with pytest.raises(ValueError, match="band"):
        Triage(band="extreme")


def test_context_shows_other_verdicts_and_the_authors_recent_flags(engine: sa.Engine) -> None:
    """An item shows the other models' verdicts on its post and how many of its author's other
    posts were flagged in the last 30 days; without author_id, no count."""
    first, second, third = insert_items(engine, 3)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE review_items SET author_id = 'author-1', created_at = CASE WHEN id = :old "
                "THEN now() - interval '40 days' ELSE created_at END WHERE id IN (:a, :b, :old)"
            ),
            {"a": first, "b": second, "old": third},
        )
        conn.execute(
            sa.text(
                "INSERT INTO verdicts (post_id, model_id, score, threshold, verdict, scored_at, "
                "role) VALUES ('p-00000', 'm@1', 0.1, 0.5, 'mismatch', now(), 'primary'), "
                "('p-00000', 'shadow@2', 0.7, 0.5, 'match', now(), 'shadow')"
            )
        )
    seen = context(engine, first)
    assert [(v.model_id, v.role, v.verdict) for v in seen.verdicts] == [
        ("shadow@2", "shadow", "match")
    ]
    assert seen.author_flagged == 1
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE review_items SET author_id = NULL WHERE id = :id"), {"id": first}
        )
    assert context(engine, first).author_flagged is None


def test_picture_settings_are_kept_per_moderator(engine: sa.Engine) -> None:
    """A new account sees pictures blurred and grey; each moderator's own levels are kept."""
    from worker.review.accounts import add_moderator

    add_moderator(engine, "alice", "correct horse battery")
    add_moderator(engine, "bob", "correct horse battery")
    assert display_for(engine, "alice") == DEFAULT_DISPLAY == Display(blur=2, greyscale=True)
    set_display(engine, "alice", Display(blur=0, greyscale=False))
    assert display_for(engine, "alice").css == "blur-0"
    assert display_for(engine, "bob").css == "blur-2 grey"
    with pytest.raises(ValueError, match="blur"):
        Display(blur=7)


def test_reason_codes_are_checked_when_read() -> None:
    """ITMGUARD_REVIEW_REASONS takes distinct lower-case codes; anything else stops the start."""
    from worker.config import Settings
    from worker.errors import ConfigError

    read = Settings.from_env({"ITMGUARD_REVIEW_REASONS": "a_b, c1"})
    assert read.review_reasons == ("a_b", "c1")
    for bad in ("", "Spam", "a,a", "two words"):
        with pytest.raises(ConfigError):
            Settings.from_env({"ITMGUARD_REVIEW_REASONS": bad})
