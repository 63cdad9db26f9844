"""`itmguard compare` on a seeded Postgres: figures checked against ones worked out by hand."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from PIL import Image

from tests.support import decide_post, write_verdict
from worker.cli import main
from worker.compare.queries import load_pairs
from worker.compare.since import parse_since
from worker.compare.summary import compare_pairs
from worker.messages import validator
from worker.verdicts import ReviewContent

A, B = "old@1", "new@2"
THRESHOLD_A, THRESHOLD_B = 0.5, 0.4
SCORED = datetime(2026, 11, 28, 12, tzinfo=UTC)
EARLIER = datetime(2026, 11, 20, 12, tzinfo=UTC)
TOP_CAPTION = 'a <b>dog</b> & "cat"'

POSTS = {
    # post: (A's score, B's score, models that queue a review item, decision, on whose item)
    "p01": (0.10, 0.05, (A,), "confirmed_mismatch", A),
    "p02": (0.20, 0.30, (A,), "not_a_mismatch", A),
    "p03": (0.30, 0.70, (A,), "not_a_mismatch", A),
    "p04": (0.45, 0.90, (A,), "confirmed_mismatch", A),
    "p05": (0.60, 0.10, (B,), "confirmed_mismatch", B),
    "p06": (0.80, 0.38, (), None, None),
    "p07": (0.90, 0.95, (), None, None),
    "p08": (0.70, 0.60, (), None, None),
    "p09": (None, 0.20, (B,), "escalate", B),
    "p10": (0.15, 0.12, (A,), "escalate", A),
}
"""Ten posts both models scored after SINCE. By hand, A's verdict down, B's across:

    A match:    B match p07 p08 (2), B mismatch p05 p06 (2)
    A mismatch: B match p03 p04 (2), B mismatch p01 p02 p10 (3)
    A error:    B mismatch p09 (1)

Agreement 5 of 10. A flags 5 (p01 p02 p03 p04 p10), B flags 6 (p01 p02 p05 p06 p09
p10). Decided (escalations are no decision): p01 p04 p05 confirmed, p02 p03 not. A's
decided flags p01 p02 p03 p04, 2 confirmed: precision 0.5, misses confirmed p05 (decided
on B's item). B's decided flags p01 p02 p05, 2 confirmed: precision 2/3, misses p04.
Disagreements by score difference: p05 0.50, p04 0.45, p06 0.42, p03 0.40, then p09
(A's error has no score)."""


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(out, format="JPEG")
    return out.getvalue()


def seed(engine: sa.Engine) -> None:
    """POSTS, a post scored by both before SINCE, and one post each model scored alone."""
    for post, (score_a, score_b, queued_by, decision, on) in POSTS.items():
        caption = TOP_CAPTION if post == "p05" else f"caption of {post}"
        review = ReviewContent(caption, f"https://img.example/{post}.jpg", None)
        if post == "p05":
            review = ReviewContent(caption, None, _jpeg((200, 30, 30)))
        for model, score, threshold in ((A, score_a, THRESHOLD_A), (B, score_b, THRESHOLD_B)):
            queued = review if model in queued_by else None
            write_verdict(engine, post, model, score, threshold, scored_at=SCORED, review=queued)
        if decision is not None:
            assert on is not None
            decide_post(engine, post, on, decision)
    old = ReviewContent("an old post", "https://img.example/p00.jpg", None)
    write_verdict(engine, "p00", A, 0.05, THRESHOLD_A, scored_at=EARLIER, review=old)
    write_verdict(engine, "p00", B, 0.05, THRESHOLD_B, scored_at=EARLIER)
    decide_post(engine, "p00", A, "confirmed_mismatch")
    write_verdict(engine, "only-a", A, 0.9, THRESHOLD_A, scored_at=SCORED)
    write_verdict(engine, "only-b", B, 0.1, THRESHOLD_B, scored_at=SCORED)


def run(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["compare", "--database-url", database_url, *args])


@pytest.mark.integration
def test_compare_gives_the_figures_worked_out_by_hand(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    """Agreement, the confusion table, flag rates, precision against moderators' decisions
    (whichever model's item they were made on) and missed confirmed mismatches are those
    worked out by hand, and the summary follows its schema."""
    seed(engine)
    out = tmp_path / "report"
    result = run(
        database_url, "--model", A, "--model", B, "--since", "2026-11-25", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    validator("compare-summary.v1").validate(summary)
    assert (summary["posts"], summary["agreed"], summary["agreement_rate"]) == (10, 5, 0.5)
    assert summary["confusion"] == {
        "match": {"match": 2, "mismatch": 2, "error": 0},
        "mismatch": {"match": 2, "mismatch": 3, "error": 0},
        "error": {"match": 0, "mismatch": 1, "error": 0},
    }
    assert (summary["decided"], summary["confirmed"], summary["disagreements"]) == (5, 3, 5)
    a, b = summary["models"]["a"], summary["models"]["b"]
    assert (a["model_id"], a["flagged"], a["flag_rate"], a["errors"]) == (A, 5, 0.5, 1)
    assert (b["model_id"], b["flagged"], b["flag_rate"], b["errors"]) == (B, 6, 0.6, 0)
    assert (a["decided_flagged"], a["confirmed_flagged"], a["precision"]) == (4, 2, 0.5)
    assert (b["decided_flagged"], b["confirmed_flagged"]) == (3, 2)
    assert b["precision"] == pytest.approx(2 / 3)
    assert (a["confirmed_missed_post_ids"], b["confirmed_missed_post_ids"]) == (["p05"], ["p04"])
    assert (a["thresholds"], b["thresholds"]) == ([THRESHOLD_A], [THRESHOLD_B])
    top = [(d["post_id"], d["decision"]) for d in summary["top_disagreements"]]
    assert top == [
        ("p05", "confirmed_mismatch"),
        ("p04", "confirmed_mismatch"),
        ("p06", None),
        ("p03", "not_a_mismatch"),
        ("p09", None),
    ]
    assert summary["top_disagreements"][0]["difference"] == pytest.approx(0.5)
    assert summary["since"] == "2026-11-25T00:00:00+00:00"
    assert "agree on 5 (50.0%)" in result.output and "precision 66.7%" in result.output


@pytest.mark.integration
def test_compare_writes_a_report_with_plots_and_pictures(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    """The report directory holds the page and both PNGs; the page shows the top
    disagreement's caption escaped with its stored thumbnail, and says when a post has no
    picture stored."""
    seed(engine)
    out = tmp_path / "report"
    result = run(database_url, "--model", A, "--model", B, "--out", str(out), "--top", "3")
    assert result.exit_code == 0, result.output
    for name in ("score_scatter.png", "score_histograms.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "a &lt;b&gt;dog&lt;/b&gt; &amp; &#34;cat&#34;" in html and TOP_CAPTION not in html
    assert "data:image/jpeg;base64," in html
    assert "no picture stored" in html  # p06: neither model queued it
    assert 'src="score_scatter.png"' in html and 'src="score_histograms.png"' in html
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["posts"] == 11 and summary["since"] is None  # p00 counts without --since
    assert [d["post_id"] for d in summary["top_disagreements"]] == ["p05", "p04", "p06"]


@pytest.mark.integration
def test_pairs_since_leave_out_posts_either_model_scored_earlier(engine: sa.Engine) -> None:
    """`since` keeps only posts both models scored at or after it."""
    seed(engine)
    write_verdict(engine, "late-a", A, 0.9, THRESHOLD_A, scored_at=SCORED)
    write_verdict(engine, "late-a", B, 0.9, THRESHOLD_B, scored_at=EARLIER)
    posts = {p.post_id for p in load_pairs(engine, A, B, since=parse_since("2026-11-25"))}
    assert posts == set(POSTS)
    every = {p.post_id for p in load_pairs(engine, A, B)}
    assert every == {*POSTS, "p00", "late-a"}


@pytest.mark.integration
def test_compare_refuses_without_two_models_or_without_common_posts(
    database_url: str, tmp_path: Path
) -> None:
    """One --model, the same model twice, or two models with no post in common end with a
    message and no report."""
    out = tmp_path / "report"
    for models in ([A], [A, A]):
        args = [x for m in models for x in ("--model", m)]
        result = run(database_url, *args, "--out", str(out))
        assert result.exit_code == 2 and "give --model twice" in result.output
    result = run(database_url, "--model", A, "--model", B, "--out", str(out))
    assert result.exit_code == 1
    assert f"no post has verdicts of both {A} and {B}" in result.output
    assert not out.exists()


def test_since_reads_a_time_without_offset_as_utc() -> None:
    """A date is its midnight UTC, a time without an offset is UTC, an offset is kept, and
    anything else is refused with an example."""
    assert parse_since("2026-11-25") == datetime(2026, 11, 25, tzinfo=UTC)
    assert parse_since("2026-11-25T09:30") == datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
    assert parse_since("2026-11-25T09:30+01:00") == datetime(2026, 11, 25, 8, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"e\.g\. 2026-11-28"):
        parse_since("last tuesday")


def test_an_empty_comparison_has_no_rates() -> None:
    """With no posts, every rate is None rather than a division by zero."""
    comparison = compare_pairs([], A, B)
    assert (comparison.agreement_rate, comparison.a.flag_rate, comparison.b.precision) == (
        None,
        None,
        None,
    )
