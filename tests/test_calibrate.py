"""Calibrating a bundle's threshold: the picking rules, and `itmguard calibrate` end to end."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from export.calibrate import MIN_PER_CLASS, pick_threshold
from worker.bundle import load_bundle
from worker.cli import main
from worker.errors import CalibrationError
from worker.testing import COLOURS, SHAPES, post_event, shape_image


def flagged_figures(
    scores: np.ndarray, labels: np.ndarray, threshold: float
) -> tuple[float, float]:
    """Mismatch precision and recall when posts scoring below `threshold` are flagged."""
    flagged = scores < threshold
    mismatch = labels == 0
    hits = int((flagged & mismatch).sum())
    return hits / max(int(flagged.sum()), 1), hits / int(mismatch.sum())


def every_cut(scores: np.ndarray) -> list[float]:
    """A threshold just above each distinct score: every way `score < t` can split the set."""
    return [float(np.nextafter(s, 2.0)) for s in np.unique(scores)]


def overlapping(
    seed: int = 0, n_match: int = 120, n_mismatch: int = 80
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a mediocre model: matches high, mismatches low, with a wide overlap."""
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.beta(4, 2, n_match), rng.beta(2, 4, n_mismatch)]
    labels = np.r_[np.ones(n_match, dtype=int), np.zeros(n_mismatch, dtype=int)]
    return scores, labels


def test_separable_scores_give_a_threshold_between_the_classes() -> None:
    """With every mismatch below every match, the threshold lies between them and the
    figures are perfect."""
    scores = np.r_[np.linspace(0.05, 0.30, 25), np.linspace(0.60, 0.95, 30)]
    labels = np.r_[np.zeros(25, dtype=int), np.ones(30, dtype=int)]
    result = pick_threshold(scores, labels)
    assert 0.30 < result.threshold < 0.60
    assert (result.method, result.target) == ("f1", None)
    assert (result.n, result.n_match, result.n_mismatch) == (55, 30, 25)
    assert (result.precision, result.recall, result.f1, result.roc_auc) == (1.0, 1.0, 1.0, 1.0)


def test_f1_threshold_is_the_best_of_all_cuts() -> None:
    """Without a target, no other threshold gives a higher mismatch F1, and the figures are
    those of `score < threshold`."""
    scores, labels = overlapping()
    result = pick_threshold(scores, labels)
    precision, recall = flagged_figures(scores, labels, result.threshold)
    assert (result.precision, result.recall) == pytest.approx((precision, recall))
    assert result.f1 == pytest.approx(2 * precision * recall / (precision + recall))
    best = max(
        2 * p * r / (p + r)
        for p, r in (flagged_figures(scores, labels, t) for t in every_cut(scores))
        if p + r > 0
    )
    assert result.f1 == pytest.approx(best)
    assert 0.5 < result.roc_auc < 1.0


def test_target_precision_gives_the_most_recall_at_that_precision() -> None:
    """`target_precision` keeps precision at or above the target and, among such
    thresholds, recall highest."""
    scores, labels = overlapping(seed=1)
    result = pick_threshold(scores, labels, target_precision=0.9)
    precision, recall = flagged_figures(scores, labels, result.threshold)
    assert (result.method, result.target) == ("target_precision", 0.9)
    assert precision >= 0.9 and (result.precision, result.recall) == pytest.approx(
        (precision, recall)
    )
    reachable = [
        r for p, r in (flagged_figures(scores, labels, t) for t in every_cut(scores)) if p >= 0.9
    ]
    assert recall == max(reachable)
    assert recall < pick_threshold(scores, labels).recall  # the target cost recall against best F1


def test_target_recall_gives_the_most_precision_at_that_recall() -> None:
    """`target_recall` keeps recall at or above the target and, among such thresholds,
    precision highest."""
    scores, labels = overlapping(seed=2)
    result = pick_threshold(scores, labels, target_recall=0.95)
    precision, recall = flagged_figures(scores, labels, result.threshold)
    assert (result.method, result.target) == ("target_recall", 0.95)
    assert recall >= 0.95 and (result.precision, result.recall) == pytest.approx(
        (precision, recall)
    )
    reachable = [
        p for p, r in (flagged_figures(scores, labels, t) for t in every_cut(scores)) if r >= 0.95
    ]
    assert precision == max(reachable)


def test_unreachable_precision_is_refused_with_the_best_achievable() -> None:
    """A precision no threshold reaches is refused, and the message gives the best precision
    there is."""
    scores, labels = overlapping(seed=3)
    scores[0] = 0.0  # the lowest score is a match: every flagged set holds a false alarm
    best = max(p for p, _ in (flagged_figures(scores, labels, t) for t in every_cut(scores)))
    with pytest.raises(CalibrationError, match=r"no threshold reaches precision 1\.0") as info:
        pick_threshold(scores, labels, target_precision=1.0)
    assert f"the best on this labelled set is {best:.4f}" in str(info.value)


def test_a_mismatch_scored_one_makes_full_recall_unreachable() -> None:
    """A mismatch with match probability 1.0 can never score below a threshold of at most 1,
    so recall 1 is refused."""
    scores, labels = overlapping(seed=4)
    scores[-1] = 1.0  # a mismatch
    with pytest.raises(CalibrationError, match=r"no threshold reaches recall 1\.0"):
        pick_threshold(scores, labels, target_recall=1.0)
    assert pick_threshold(scores, labels, target_recall=0.9).threshold <= 1.0


def test_scores_that_are_all_one_are_refused() -> None:
    """When every post scores 1.0 no threshold in [0, 1] flags anything, which is said, not
    crashed on."""
    with pytest.raises(CalibrationError, match="no threshold flags any"):
        pick_threshold(np.ones(50), np.r_[np.zeros(25, dtype=int), np.ones(25, dtype=int)])


@pytest.mark.parametrize(
    ("n_match", "n_mismatch"), [(MIN_PER_CLASS - 1, 50), (50, MIN_PER_CLASS - 1)]
)
def test_too_few_of_a_class_is_refused(n_match: int, n_mismatch: int) -> None:
    """A labelled set under the minimum of either class is refused, naming the counts and
    the minimum."""
    scores, labels = overlapping(n_match=n_match, n_mismatch=n_mismatch)
    with pytest.raises(CalibrationError) as info:
        pick_threshold(scores, labels)
    assert f"{n_match} matching and {n_mismatch} mismatching" in str(info.value)
    assert f"at least {MIN_PER_CLASS} of each" in str(info.value)


def test_both_targets_are_refused() -> None:
    """A target precision and a target recall together are a caller's mistake."""
    scores, labels = overlapping()
    with pytest.raises(ValueError, match="not both"):
        pick_threshold(scores, labels, target_precision=0.9, target_recall=0.9)


# --- itmguard calibrate --------------------------------------------------------------------------


def labelled_lines(n_match: int, n_mismatch: int) -> list[bytes]:
    """Labelled post events over generated shapes; a mismatch names the wrong colour."""
    kinds = itertools.cycle(itertools.product(COLOURS, SHAPES))
    lines = []
    for i in range(n_match + n_mismatch):
        colour, shape = next(kinds)
        image = shape_image(colour, shape, size=48, seed=i)
        label = int(i < n_match)
        named = colour if label else next(c for c in COLOURS if c != colour)
        lines.append(post_event(f"l-{i:03d}", f"a {named} {shape}", image, label=label))
    return lines


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the tiny bundle that a test may calibrate; the session's bundle stays as
    exported."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def calibrate(bundle: Path, labelled: Path, *args: str) -> Result:
    return CliRunner().invoke(
        main,
        [
            "calibrate",
            "--bundle",
            str(bundle),
            "--labelled",
            str(labelled),
            "--providers",
            "cpu",
            *args,
        ],
    )


def test_calibrate_writes_threshold_figures_and_plots(bundle: Path, tmp_path: Path) -> None:
    """`calibrate` records the threshold and its figures in bundle.json, writes both PNGs, and the
    worker's own verdicts at that threshold give the reported precision and recall."""
    before = json.loads((bundle / "bundle.json").read_text())
    lines = labelled_lines(24, 24)
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_bytes(b"\n".join(lines) + b"\n")

    result = calibrate(bundle, labelled)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["method"], summary["n"], summary["n_match"], summary["n_mismatch"]) == (
        "f1",
        48,
        24,
        24,
    )

    spec = load_bundle(bundle).spec  # still a bundle the worker accepts, model hash and all
    assert spec.threshold == summary["threshold"]
    calibration = spec.raw["calibration"]
    for key in (
        "method",
        "target",
        "n",
        "n_match",
        "n_mismatch",
        "precision",
        "recall",
        "f1",
        "roc_auc",
    ):
        assert calibration[key] == summary[key], key
    assert calibration["labelled_sha256"] == hashlib.sha256(labelled.read_bytes()).hexdigest()
    assert datetime.fromisoformat(calibration["calibrated_at"]).tzinfo is not None
    assert {k: v for k, v in spec.raw.items() if k not in ("threshold", "calibration")} == {
        k: v for k, v in before.items() if k not in ("threshold", "calibration")
    }
    assert (
        sorted(p.name for p in bundle.iterdir() if p.name.startswith(".")) == []
    )  # no temp file left

    for name in ("pr_curve.png", "score_histogram.png"):
        with Image.open(bundle / name) as image:
            image.verify()
            assert (image.format, image.size) == ("PNG", (640, 480))

    events = tmp_path / "posts.jsonl"
    events.write_bytes(
        b"\n".join(
            json.dumps({k: v for k, v in json.loads(line).items() if k != "label"}).encode()
            for line in lines
        )
        + b"\n"
    )
    scored = CliRunner().invoke(
        main, ["score", "--bundle", str(bundle), "--providers", "cpu", "--input", str(events)]
    )
    assert scored.exit_code == 0, scored.output
    verdicts = [json.loads(line) for line in scored.stdout.splitlines()]
    assert {v["threshold"] for v in verdicts} == {summary["threshold"]}
    flagged = np.array([v["verdict"] == "mismatch" for v in verdicts])
    mismatch = np.array([json.loads(line)["label"] == 0 for line in lines])
    hits = int((flagged & mismatch).sum())
    assert summary["precision"] == pytest.approx(hits / flagged.sum())
    assert summary["recall"] == pytest.approx(hits / mismatch.sum())
    p, r = summary["precision"], summary["recall"]
    assert summary["f1"] == pytest.approx(2 * p * r / (p + r))
    assert 0.0 <= summary["roc_auc"] <= 1.0


def test_calibrate_skips_and_reports_bad_lines(bundle: Path, tmp_path: Path) -> None:
    """Unusable labelled lines are skipped and reported by line number; the rest still calibrate."""
    good = labelled_lines(MIN_PER_CLASS, MIN_PER_CLASS)
    bad = [
        b'{"post_id": "x", "caption": ',  # line 2
        post_event("nolabel", "a red circle", shape_image("red", "circle")),  # line 4
        post_event("two", "a red circle", shape_image("red", "circle"), label=2),  # line 6
        post_event("text", "a red circle", shape_image("red", "circle"), label="1"),  # line 8
        post_event("noimage", "a red circle", b"not an image", label=0),  # line 10
        post_event(
            "extra", "a red circle", shape_image("red", "circle"), label=1, surprise=1
        ),  # 12
    ]
    lines = list(itertools.chain.from_iterable(itertools.zip_longest(good[:6], bad))) + good[6:]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_bytes(b"\n".join(lines) + b"\n\n")

    result = calibrate(bundle, labelled, "--target-recall", "0.5")
    assert result.exit_code == 0, result.output
    assert (
        "skipped 6 labelled line(s) that gave no score: line 2 (invalid_json), "
        "line 4 (missing_label), line 6 (invalid_label), line 8 (invalid_label), "
        "line 10 (image_decode_failed) and 1 more"
    ) in result.stderr
    summary = json.loads(result.stdout)
    assert (summary["n"], summary["method"], summary["target"]) == (
        2 * MIN_PER_CLASS,
        "target_recall",
        0.5,
    )
    assert summary["recall"] >= 0.5
    assert load_bundle(bundle).spec.raw["calibration"]["method"] == "target_recall"


def test_calibrate_refuses_too_few_of_a_class(bundle: Path, tmp_path: Path) -> None:
    """Too few mismatches stop `calibrate` with the minimum in the message, leaving the
    bundle as it was."""
    before = (bundle / "bundle.json").read_bytes()
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_bytes(b"\n".join(labelled_lines(25, 5)) + b"\n")
    result = calibrate(bundle, labelled)
    assert result.exit_code == 1
    assert "25 matching and 5 mismatching posts" in result.output
    assert f"at least {MIN_PER_CLASS} of each" in result.output
    assert (bundle / "bundle.json").read_bytes() == before
    assert not (bundle / "pr_curve.png").exists()


def test_calibrate_usage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The help states the positive class and the minimum; both targets are refused; a missing
    extra is named."""
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_bytes(b"")
    helped = CliRunner().invoke(main, ["calibrate", "--help"])
    text = " ".join(helped.output.split())
    assert "Mismatch is the positive class" in text
    assert f"at least {MIN_PER_CLASS} matching and {MIN_PER_CLASS} mismatching" in text

    both = calibrate(tmp_path, labelled, "--target-precision", "0.9", "--target-recall", "0.9")
    assert both.exit_code == 2 and "not both" in both.output

    monkeypatch.setitem(sys.modules, "export.calibrate", None)
    missing = calibrate(tmp_path, labelled)
    assert missing.exit_code == 1 and "pip install 'itmguard[export]'" in missing.output
