"""Moderators' decisions exported as labelled posts for calibration, from a real Postgres."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tests.support import LEASE, decide_post, write_verdict
from worker.cli import main
from worker.messages import validator
from worker.persistence import write_outcomes
from worker.review.items import list_items
from worker.review.labels import export_labels
from worker.review.queue import claim, decide
from worker.verdicts import Outcome, Record, ReviewContent, Verdict

pytestmark = pytest.mark.integration


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


def test_export_labels_since_and_model_filter_decisions(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    """`--since` keeps decisions made at or after it (a time without offset being UTC) and
    `--model` the items one model queued; the function takes the same filters."""
    scored = datetime(2026, 11, 20, tzinfo=UTC)
    posts = {"early": "m@1", "late": "m@1", "late-other": "m@2"}
    for post, model in posts.items():
        review = ReviewContent(f"caption of {post}", f"https://img.example/{post}.jpg", None)
        write_verdict(engine, post, model, 0.1, 0.5, scored_at=scored, review=review)
        decide_post(engine, post, model, "confirmed_mismatch")
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE review_items SET decided_at = :at WHERE post_id = :p"),
            [
                {"p": "early", "at": datetime(2026, 11, 24, 23, tzinfo=UTC)},
                {"p": "late", "at": datetime(2026, 11, 25, 1, tzinfo=UTC)},
                {"p": "late-other", "at": datetime(2026, 11, 26, tzinfo=UTC)},
            ],
        )
    out = tmp_path / "labels.jsonl"
    args = ["--out", str(out), "--since", "2026-11-25T00:00", "--model", "m@1"]
    result = CliRunner().invoke(
        main, ["review", "export-labels", "--database-url", database_url, *args]
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["post_id"] for line in out.read_text().splitlines()] == ["late"]
    since = datetime(2026, 11, 25, 1, 30, tzinfo=timezone(timedelta(hours=1)))
    written = io.StringIO()
    assert export_labels(engine, written, since=since).written == 2
    assert '"early"' not in written.getvalue()
    old_spelling = CliRunner().invoke(
        main,
        ["review", "export-labels", "--database-url", database_url, "--model-id", "m@2"],
    )
    assert old_spelling.exit_code == 0, old_spelling.output
    assert '"late-other"' in old_spelling.stdout and '"late"' not in old_spelling.stdout
