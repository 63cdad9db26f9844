"""Pick a bundle's threshold from labelled posts, and record how it was picked.

A labelled post is a post event plus `label`: 1 when image and caption
match, 0 when they do not (`itmguard review export-labels` writes them).
The positive class is the *mismatch*, because that is what the worker acts
on: a post is flagged when its match probability is below the threshold,
precision is the share of flagged posts that really are mismatches (the
moderators' wasted reviews), and recall the share of mismatches that get
flagged (the misses). The threshold, those figures and the ROC AUC go into
`bundle.json`, so a bundle says what it was tuned for; a PR curve and a score
histogram are written beside it for the people who choose the target.

Needs the `export` extra (scikit-learn, matplotlib).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import precision_recall_curve, roc_auc_score

from worker.batch import Record, image_urls, parse_records, score_parsed
from worker.bundle import Bundle, BundleSpec, load_bundle
from worker.config import DEFAULT_FETCH_LIMITS, FetchLimits
from worker.errors import CalibrationError
from worker.fetch import fetch_urls
from worker.scoring import OnnxScorer, Scorer

__all__ = [
    "MIN_PER_CLASS",
    "PR_CURVE",
    "SCORE_HISTOGRAM",
    "Calibration",
    "Labelled",
    "Skipped",
    "calibrate_bundle",
    "pick_threshold",
    "plot_pr_curve",
    "plot_score_histogram",
    "score_labelled",
]

MIN_PER_CLASS = 20
"""Fewest matching and fewest mismatching posts a labelled set must hold: below
that, one post moves precision or recall by more than five points."""

PR_CURVE = "pr_curve.png"
SCORE_HISTOGRAM = "score_histogram.png"

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


@dataclass(frozen=True)
class Skipped:
    """A labelled line that gave no score, and why (a dead-letter code or a label problem)."""

    line: int
    reason: str


@dataclass(frozen=True)
class Labelled:
    """A labelled file after scoring: a score and a label per usable line."""

    scores: NDArray[np.float64]
    labels: NDArray[np.int64]
    skipped: tuple[Skipped, ...]
    sha256: str


def _method(target_precision: float | None, target_recall: float | None) -> tuple[Method, float | None]:
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

    # Flagging `-score >= cut` is flagging `score <= -cut`; the last point flags nothing.
    precision, recall, cuts = precision_recall_curve(mismatch, -score)
    precision, recall = precision[:-1], recall[:-1]
    distinct = np.unique(score)
    below = np.searchsorted(distinct, -cuts)
    above = np.append(distinct, 1.0)[below + 1]
    halfway = (distinct[below] + above) / 2
    thresholds = np.where(halfway > distinct[below], halfway, above)
    usable = thresholds > distinct[below]  # a score of exactly 1.0 cannot be flagged
    if not usable.any():
        raise CalibrationError("every labelled post has match probability 1.0: no threshold flags any")
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)

    if method == "f1":
        chosen = _best(usable, f1, precision)
    elif method == "target_precision":
        assert target is not None
        reaches = usable & (precision >= target)
        if not reaches.any():
            best = _best(usable, precision, recall)
            raise CalibrationError(
                f"no threshold reaches precision {target}: the best on this labelled set is "
                f"{precision[best]:.4f} (at recall {recall[best]:.4f})"
            )
        chosen = _best(reaches, recall, precision)
    else:
        assert target is not None
        reaches = usable & (recall >= target)
        if not reaches.any():
            best = _best(usable, recall, precision)
            raise CalibrationError(
                f"no threshold reaches recall {target}: the best on this labelled set is "
                f"{recall[best]:.4f} (at precision {precision[best]:.4f})"
            )
        chosen = _best(reaches, precision, recall)

    return Calibration(
        method=method,
        target=target,
        threshold=float(thresholds[chosen]),
        n=len(label),
        n_match=n_match,
        n_mismatch=n_mismatch,
        precision=float(precision[chosen]),
        recall=float(recall[chosen]),
        f1=float(f1[chosen]),
        roc_auc=float(roc_auc_score(mismatch, 1.0 - score)),
    )


def _best(allowed: NDArray[np.bool_], first: NDArray[np.float64], then: NDArray[np.float64]) -> int:
    """Index of the allowed point with the largest `first`, ties broken by the largest `then`."""
    index = np.flatnonzero(allowed)
    order = np.lexsort((then[index], first[index]))
    return int(index[order[-1]])


def _split_label(line: bytes) -> tuple[bytes, int] | str:
    """The post event without its `label`, and the label; or why the line is unusable."""
    try:
        doc = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "invalid_json"
    if not isinstance(doc, dict) or "label" not in doc:
        return "missing_label"
    label = doc.pop("label")
    if type(label) is not int or label not in (0, 1):
        return "invalid_label"
    return json.dumps(doc).encode(), label


@dataclass(frozen=True)
class _Line:
    number: int
    payload: bytes
    label: int


def _batches(lines: Iterable[_Line], size: int) -> Iterator[list[_Line]]:
    batch: list[_Line] = []
    for item in lines:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_labelled(
    path: Path,
    scorer: Scorer,
    *,
    limits: FetchLimits = DEFAULT_FETCH_LIMITS,
    batch_size: int = 32,
) -> Labelled:
    """Score every labelled line of `path` through the worker's own scoring path.

    Lines that give no score (bad JSON, a bad or missing label, a post the
    worker would dead-letter) are skipped and listed, not fatal: one bad line
    should not cost a labelled set that took moderators days. The file is
    hashed as it is read, so the hash is of the lines that were scored.
    """
    digest = hashlib.sha256()
    skipped: list[Skipped] = []

    def lines() -> Iterator[_Line]:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                digest.update(line)
                if not line.strip():
                    continue
                split = _split_label(line)
                if isinstance(split, str):
                    skipped.append(Skipped(number, split))
                else:
                    yield _Line(number, *split)

    scores: list[float] = []
    labels: list[int] = []
    for batch in _batches(lines(), batch_size):
        parsed = parse_records([Record(x.payload, topic=str(path), offset=x.number) for x in batch])
        fetched = fetch_urls(limits, image_urls(parsed))
        outcomes = score_parsed(parsed, scorer, limits, fetched=fetched)
        for line, outcome in zip(batch, outcomes, strict=True):
            if outcome.verdict is not None and outcome.verdict.score is not None:
                scores.append(outcome.verdict.score)
                labels.append(line.label)
            else:
                assert outcome.dead_letter is not None
                skipped.append(Skipped(line.number, str(outcome.dead_letter["reason"])))
    return Labelled(
        scores=np.asarray(scores, dtype=np.float64),
        labels=np.asarray(labels, dtype=np.int64),
        skipped=tuple(sorted(skipped, key=lambda s: s.line)),
        sha256=digest.hexdigest(),
    )


def plot_pr_curve(
    scores: ArrayLike, labels: ArrayLike, calibration: Calibration, path: Path
) -> None:
    """Mismatch precision against recall over every threshold, the chosen one marked."""
    score = np.asarray(scores, dtype=np.float64)
    mismatch = np.asarray(labels) == 0
    precision, recall, _ = precision_recall_curve(mismatch, -score)
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(recall, precision, drawstyle="steps-post", label="mismatch PR curve")
    ax.axhline(calibration.n_mismatch / calibration.n, color="grey", linestyle=":",
               label="share of mismatches (chance)")
    if calibration.method == "target_precision" and calibration.target is not None:
        ax.axhline(calibration.target, color="tab:red", linestyle="--", label="target precision")
    elif calibration.method == "target_recall" and calibration.target is not None:
        ax.axvline(calibration.target, color="tab:red", linestyle="--", label="target recall")
    ax.plot([calibration.recall], [calibration.precision], "o", color="black",
            label=f"threshold {calibration.threshold:.4f} (F1 {calibration.f1:.3f})")
    ax.set(xlabel="recall (mismatches flagged)", ylabel="precision (flags that are mismatches)",
           xlim=(0, 1.01), ylim=(0, 1.01),
           title=f"n={calibration.n}, ROC AUC {calibration.roc_auc:.3f}")
    ax.legend(loc="lower left")
    fig.savefig(path, format="png")


def plot_score_histogram(
    scores: ArrayLike, labels: ArrayLike, threshold: float, path: Path
) -> None:
    """Match probabilities of matching and of mismatching posts, with the threshold line."""
    score = np.asarray(scores, dtype=np.float64)
    label = np.asarray(labels)
    bins = [i / 40 for i in range(41)]
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(score[label == 1], bins=bins, alpha=0.6, color="tab:green",
            label=f"match (n={int((label == 1).sum())})")
    ax.hist(score[label == 0], bins=bins, alpha=0.6, color="tab:red",
            label=f"mismatch (n={int((label == 0).sum())})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4f}")
    ax.set(xlabel="match probability (flagged below the threshold)", ylabel="posts", xlim=(0, 1))
    ax.legend(loc="upper center")
    fig.savefig(path, format="png")


def _skipped_message(skipped: Sequence[Skipped]) -> str:
    shown = ", ".join(f"line {s.line} ({s.reason})" for s in skipped[:_SHOWN_SKIPS])
    more = f" and {len(skipped) - _SHOWN_SKIPS} more" if len(skipped) > _SHOWN_SKIPS else ""
    return f"skipped {len(skipped)} labelled line(s) that gave no score: {shown}{more}"


def _write_manifest_atomically(path: Path, manifest: dict[str, Any]) -> None:
    """Replace bundle.json in one rename, so a worker starting meanwhile reads old or new, never half."""
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
        labelled.scores, labelled.labels,
        target_precision=target_precision, target_recall=target_recall,
    )
    plot_pr_curve(labelled.scores, labelled.labels, calibration, bundle.path / PR_CURVE)
    plot_score_histogram(labelled.scores, labelled.labels, calibration.threshold,
                         bundle.path / SCORE_HISTOGRAM)
    _record(bundle, calibration, labelled.sha256)
    return calibration
