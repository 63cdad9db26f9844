"""Pick a bundle's threshold from labelled posts, and record how it was picked.

A labelled post is a post event plus `label`: 1 when image and caption
match, 0 when they do not (`itmguard review export-labels` writes them).
The positive class is the *mismatch*, because that is what the worker acts
on: a post is flagged when its match probability is below the threshold,
precision is the share of flagged posts that really are mismatches (the
moderators' wasted reviews), and recall the share of mismatches that get
flagged (the misses). The threshold, those figures and the ROC AUC go into
`bundle.json`, so a bundle says what it was tuned for; a PR curve and a score
histogram (`export.calibration_plots`) are written beside it for the people who
choose the target. The labelled file is scored by `export.labelled_posts`.

Needs the `export` extra (scikit-learn, matplotlib).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import precision_recall_curve, roc_auc_score

from export.calibration_plots import (
    PR_CURVE,
    SCORE_HISTOGRAM,
    plot_pr_curve,
    plot_score_histogram,
)
from export.labelled_posts import Skipped, score_labelled
from worker.bundle import Bundle, BundleSpec, load_bundle
from worker.config import DEFAULT_FETCH_LIMITS, FetchLimits
from worker.errors import CalibrationError
from worker.scoring import OnnxScorer

__all__ = ["MIN_PER_CLASS", "Calibration", "calibrate_bundle", "pick_threshold"]

MIN_PER_CLASS = 20
"""Fewest matching and fewest mismatching posts a labelled set must hold: below
that, one post moves precision or recall by more than five points."""

Method = Literal["f1", "target_precision", "target_recall"]

_SHOWN_SKIPS = 5


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold and the figures it gives on the labelled set (mismatch = positive)."""

    method: Method
    target: float | None
    threshold: float
    n: int
    n_match: int
    n_mismatch: int
    precision: float
    recall: float
    f1: float
    roc_auc: float

    def to_manifest(self, *, labelled_sha256: str, calibrated_at: str) -> dict[str, Any]:
        """The `calibration` object of bundle.json (the threshold is its own top-level field)."""
        return {
            "method": self.method,
            "target": self.target,
            "n": self.n,
            "n_match": self.n_match,
            "n_mismatch": self.n_mismatch,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "roc_auc": self.roc_auc,
            "labelled_sha256": labelled_sha256,
            "calibrated_at": calibrated_at,
        }


def _method(
    target_precision: float | None, target_recall: float | None
) -> tuple[Method, float | None]:
    if target_precision is not None and target_recall is not None:
        raise ValueError("give a target precision or a target recall, not both")
    for target in (target_precision, target_recall):
        if target is not None and not 0.0 < target <= 1.0:
            raise ValueError(f"a target must be in (0, 1], not {target}")
    if target_precision is not None:
        return "target_precision", target_precision
    if target_recall is not None:
        return "target_recall", target_recall
    return "f1", None


def pick_threshold(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    target_precision: float | None = None,
    target_recall: float | None = None,
    min_per_class: int = MIN_PER_CLASS,
) -> Calibration:
    """Choose the threshold on scored, labelled posts.

    Without a target, the threshold with the best mismatch F1; with
    `target_precision`, the highest recall at that precision or better; with
    `target_recall`, the highest precision at that recall or better. Each
    threshold lies halfway between two neighbouring labelled scores, so
    `score < threshold` flags exactly the posts the figures count.

    Args:
        scores: match probabilities in [0, 1].
        labels: 1 where image and caption match, 0 where they do not.

    Raises:
        CalibrationError: fewer than `min_per_class` posts of a class, or no
            threshold reaches the target (the message gives the best reachable).
        ValueError: both targets, a target outside (0, 1], or bad arrays.
    """
    method, target = _method(target_precision, target_recall)
    score, mismatch = _checked(scores, labels, min_per_class)
    curve = _curve(score, mismatch)
    chosen = _choose(curve, method, target)
    n_mismatch = int(mismatch.sum())
    return Calibration(
        method=method,
        target=target,
        threshold=float(curve.thresholds[chosen]),
        n=len(score),
        n_match=len(score) - n_mismatch,
        n_mismatch=n_mismatch,
        precision=float(curve.precision[chosen]),
        recall=float(curve.recall[chosen]),
        f1=float(curve.f1[chosen]),
        roc_auc=float(roc_auc_score(mismatch, 1.0 - score)),
    )


def _checked(
    scores: ArrayLike, labels: ArrayLike, min_per_class: int
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """The scores as floats and which posts are mismatches, once both are fit to pick from.

    Raises:
        ValueError: arrays of other shapes, scores outside [0, 1], labels other than 0 and 1.
        CalibrationError: fewer than `min_per_class` posts of a class.
    """
    score = np.asarray(scores, dtype=np.float64)
    label = np.asarray(labels)
    if score.ndim != 1 or score.shape != label.shape:
        raise ValueError("scores and labels must be 1-d arrays of one length")
    if not np.all((score >= 0.0) & (score <= 1.0)):
        raise ValueError("scores must be match probabilities in [0, 1]")
    if not np.all((label == 0) | (label == 1)):
        raise ValueError("labels must be 0 (mismatch) or 1 (match)")
    mismatch = label == 0
    n_mismatch = int(mismatch.sum())
    n_match = len(label) - n_mismatch
    if min(n_match, n_mismatch) < min_per_class:
        raise CalibrationError(
            f"the labelled set has {n_match} matching and {n_mismatch} mismatching posts; "
            f"calibration needs at least {min_per_class} of each"
        )
    return score, mismatch


@dataclass(frozen=True)
class _Curve:
    """The mismatch PR curve's points, each with the threshold that gives it."""

    thresholds: NDArray[np.float64]
    precision: NDArray[np.float64]
    recall: NDArray[np.float64]
    f1: NDArray[np.float64]
    usable: NDArray[np.bool_]
    """Whether a threshold of at most 1.0 gives the point (a score of 1.0 cannot be flagged)."""


def _curve(score: NDArray[np.float64], mismatch: NDArray[np.bool_]) -> _Curve:
    """Every point of the PR curve, its threshold halfway between two neighbouring scores.

    Raises:
        CalibrationError: every post scores 1.0, so no threshold flags any.
    """
    # Flagging `-score >= cut` is flagging `score <= -cut`; the last point flags nothing.
    precision, recall, cuts = precision_recall_curve(mismatch, -score)
    precision, recall = precision[:-1], recall[:-1]
    distinct = np.unique(score)
    below = np.searchsorted(distinct, -cuts)
    above = np.append(distinct, 1.0)[below + 1]
    halfway = (distinct[below] + above) / 2
    thresholds = np.where(halfway > distinct[below], halfway, above)
    usable = thresholds > distinct[below]
    if not usable.any():
        raise CalibrationError(
            "every labelled post has match probability 1.0: no threshold flags any"
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return _Curve(thresholds, precision, recall, f1, usable)


def _choose(curve: _Curve, method: Method, target: float | None) -> int:
    """Index of the point `method` picks: the best F1, or the most of the other figure
    among the points whose targeted figure reaches `target`.

    Raises:
        CalibrationError: no usable point reaches the target; the message gives the best.
    """
    if method == "f1":
        return _best(curve.usable, curve.f1, curve.precision)
    assert target is not None  # _method pairs each target method with its target
    figures = {"precision": curve.precision, "recall": curve.recall}
    held, traded = (
        ("precision", "recall") if method == "target_precision" else ("recall", "precision")
    )
    reaches = curve.usable & (figures[held] >= target)
    if not reaches.any():
        best = _best(curve.usable, figures[held], figures[traded])
        raise CalibrationError(
            f"no threshold reaches {held} {target}: the best on this labelled set is "
            f"{figures[held][best]:.4f} (at {traded} {figures[traded][best]:.4f})"
        )
    return _best(reaches, figures[traded], figures[held])


def _best(allowed: NDArray[np.bool_], first: NDArray[np.float64], then: NDArray[np.float64]) -> int:
    """Index of the allowed point with the largest `first`, ties broken by the largest `then`."""
    index = np.flatnonzero(allowed)
    order = np.lexsort((then[index], first[index]))
    return int(index[order[-1]])


def _skipped_message(skipped: Sequence[Skipped]) -> str:
    shown = ", ".join(f"line {s.line} ({s.reason})" for s in skipped[:_SHOWN_SKIPS])
    more = f" and {len(skipped) - _SHOWN_SKIPS} more" if len(skipped) > _SHOWN_SKIPS else ""
    return f"skipped {len(skipped)} labelled line(s) that gave no score: {shown}{more}"


def _write_manifest_atomically(path: Path, manifest: dict[str, Any]) -> None:
    """Replace bundle.json in one rename, so that a worker starting meanwhile reads the old
    manifest or the new one, never half of one."""
    target = path / "bundle.json"
    mode = target.stat().st_mode & 0o777
    fd, temp = tempfile.mkstemp(dir=path, prefix=".bundle.json.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(manifest, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _record(bundle: Bundle, calibration: Calibration, labelled_sha256: str) -> None:
    current = load_bundle(bundle.path)  # re-read: keep fields changed since, refuse another model
    if current.spec.model_sha256 != bundle.spec.model_sha256:
        raise CalibrationError(
            f"model bundle {bundle.path} holds another model than the one scored; run again"
        )
    manifest = {
        **current.spec.raw,
        "threshold": calibration.threshold,
        "calibration": calibration.to_manifest(
            labelled_sha256=labelled_sha256,
            calibrated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ),
    }
    BundleSpec.from_manifest(manifest, str(bundle.path))
    _write_manifest_atomically(bundle.path, manifest)


def calibrate_bundle(
    bundle_dir: Path | str,
    labelled_path: Path | str,
    *,
    target_precision: float | None = None,
    target_recall: float | None = None,
    providers: Sequence[str] = ("cpu",),
    trt_cache_dir: Path | None = None,
    limits: FetchLimits = DEFAULT_FETCH_LIMITS,
    batch_size: int = 32,
    progress: Callable[[str], None] = lambda _: None,
) -> Calibration:
    """Score the labelled posts with the bundle, pick its threshold, and write it into the bundle.

    Writes `threshold` and `calibration` into bundle.json (every other field
    kept; the model hash covers model.onnx only, so it stands) and
    `pr_curve.png` and `score_histogram.png` beside it. Skipped lines are
    reported through `progress`.

    Args:
        providers: ONNX Runtime providers allowed, as for the worker.
        trt_cache_dir: TensorRT engine cache; None for the scorer's default.
        limits: what an image may cost to fetch and decode.

    Raises:
        BundleError: the bundle cannot be used.
        CalibrationError: too few posts of a class, or an unreachable target.
        ValueError: both targets, or a target outside (0, 1].
    """
    _method(target_precision, target_recall)  # refuse bad targets before the slow part
    bundle = load_bundle(bundle_dir)
    options: dict[str, Any] = {} if trt_cache_dir is None else {"trt_cache_dir": trt_cache_dir}
    scorer = OnnxScorer(bundle, providers=providers, **options)
    labelled = score_labelled(Path(labelled_path), scorer, limits=limits, batch_size=batch_size)
    if labelled.skipped:
        progress(_skipped_message(labelled.skipped))
    calibration = pick_threshold(
        labelled.scores,
        labelled.labels,
        target_precision=target_precision,
        target_recall=target_recall,
    )
    plot_pr_curve(labelled.scores, labelled.labels, calibration, bundle.path / PR_CURVE)
    plot_score_histogram(
        labelled.scores, labelled.labels, calibration.threshold, bundle.path / SCORE_HISTOGRAM
    )
    _record(bundle, calibration, labelled.sha256)
    return calibration
