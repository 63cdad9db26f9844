"""The two pictures `itmguard calibrate` leaves beside bundle.json, for the people who
choose the target: the mismatch PR curve with the chosen threshold marked, and the
match probabilities of both classes with the threshold line.

Kept apart from the picking (`export.calibrate`) because they only show its result;
drawn on matplotlib's Agg canvas, so no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import precision_recall_curve

if TYPE_CHECKING:  # export.calibrate draws with this module
    from export.calibrate import Calibration

__all__ = ["PR_CURVE", "SCORE_HISTOGRAM", "plot_pr_curve", "plot_score_histogram"]

PR_CURVE = "pr_curve.png"
SCORE_HISTOGRAM = "score_histogram.png"


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
    ax.axhline(
        calibration.n_mismatch / calibration.n,
        color="grey",
        linestyle=":",
        label="share of mismatches (chance)",
    )
    if calibration.method == "target_precision" and calibration.target is not None:
        ax.axhline(calibration.target, color="tab:red", linestyle="--", label="target precision")
    elif calibration.method == "target_recall" and calibration.target is not None:
        ax.axvline(calibration.target, color="tab:red", linestyle="--", label="target recall")
    ax.plot(
        [calibration.recall],
        [calibration.precision],
        "o",
        color="black",
        label=f"threshold {calibration.threshold:.4f} (F1 {calibration.f1:.3f})",
    )
    ax.set(
        xlabel="recall (mismatches flagged)",
        ylabel="precision (flags that are mismatches)",
        xlim=(0, 1.01),
        ylim=(0, 1.01),
        title=f"n={calibration.n}, ROC AUC {calibration.roc_auc:.3f}",
    )
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
    ax.hist(
        score[label == 1],
        bins=bins,
        alpha=0.6,
        color="tab:green",
        label=f"match (n={int((label == 1).sum())})",
    )
    ax.hist(
        score[label == 0],
        bins=bins,
        alpha=0.6,
        color="tab:red",
        label=f"mismatch (n={int((label == 0).sum())})",
    )
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4f}")
    ax.set(xlabel="match probability (flagged below the threshold)", ylabel="posts", xlim=(0, 1))
    ax.legend(loc="upper center")
    fig.savefig(path, format="png")
