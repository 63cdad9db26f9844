"""The two pictures of `itmguard compare`: A's score against B's for every post, and each
model's score histogram, with the thresholds drawn in.

Drawn on matplotlib's Agg canvas, so no display is needed. matplotlib comes
with the `export` extra: `worker.compare.commands` imports this module only
when it draws, so the rest of the runtime never needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from worker.compare.summary import CONFIRMED, Comparison, Pair

__all__ = ["SCATTER", "SCORE_HISTOGRAMS", "plot_histograms", "plot_scatter"]

SCATTER = "score_scatter.png"
SCORE_HISTOGRAMS = "score_histograms.png"

_GROUPS: tuple[tuple[str, str, Callable[[Pair], bool]], ...] = (
    ("both match", "tab:green", lambda p: p.verdict_a == p.verdict_b == "match"),
    ("both mismatch", "tab:red", lambda p: p.verdict_a == p.verdict_b == "mismatch"),
    ("verdicts differ", "tab:orange", lambda p: p.verdict_a != p.verdict_b),
)
"""How the scatter colours a post, by whether the two verdicts agree and on what."""


def _points(pairs: Sequence[Pair]) -> list[tuple[float, float, Pair]]:
    """A's and B's scores of each post both scored (an error verdict has none)."""
    return [
        (p.score_a, p.score_b, p) for p in pairs if p.score_a is not None and p.score_b is not None
    ]


def plot_scatter(pairs: Sequence[Pair], comparison: Comparison, path: Path) -> None:
    """A's match probability across, B's up, a point per post coloured by agreement,
    moderators' confirmed mismatches ringed, each model's threshold as a dashed line."""
    points = _points(pairs)
    fig = Figure(figsize=(6.4, 7.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, colour, member in _GROUPS:
        group = [(a, b) for a, b, p in points if member(p)]
        if group:
            ax.scatter(
                [a for a, _ in group],
                [b for _, b in group],
                s=14,
                alpha=0.7,
                color=colour,
                label=f"{label} ({len(group)})",
            )
    confirmed = [(a, b) for a, b, p in points if p.decision == CONFIRMED]
    if confirmed:
        ax.scatter(
            [a for a, _ in confirmed],
            [b for _, b in confirmed],
            s=60,
            facecolors="none",
            edgecolors="black",
            label=f"confirmed mismatch ({len(confirmed)})",
        )
    for t in comparison.a.thresholds:
        ax.axvline(t, color="grey", linestyle="--", linewidth=1)
    for t in comparison.b.thresholds:
        ax.axhline(t, color="grey", linestyle="--", linewidth=1)
    ax.set(
        xlabel=f"A: {comparison.a.model_id} (match probability)",
        ylabel=f"B: {comparison.b.model_id} (match probability)",
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        title=f"{len(points)} posts with both scores; dashed: thresholds",
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_histograms(pairs: Sequence[Pair], comparison: Comparison, path: Path) -> None:
    """Each model's match probabilities over the compared posts, one panel each, its
    threshold as a dashed line: posts left of it are flagged."""
    bins = [i / 40 for i in range(41)]
    fig = Figure(figsize=(6.4, 7.0), dpi=100)
    FigureCanvasAgg(fig)
    panels = fig.subplots(2, 1, sharex=True)
    models = (
        ("A", comparison.a, [p.score_a for p in pairs if p.score_a is not None], "tab:blue"),
        ("B", comparison.b, [p.score_b for p in pairs if p.score_b is not None], "tab:purple"),
    )
    for ax, (role, figures, scores, colour) in zip(panels, models, strict=True):
        ax.hist(scores, bins=bins, color=colour, alpha=0.75)
        for t in figures.thresholds:
            ax.axvline(t, color="black", linestyle="--", label=f"threshold {t:.4f}")
        ax.set(ylabel="posts", xlim=(0, 1), title=f"{role}: {figures.model_id}")
        if figures.thresholds:
            ax.legend(loc="upper center", fontsize="small")
    panels[-1].set(xlabel="match probability (flagged below the threshold)")
    fig.tight_layout()
    fig.savefig(path, format="png")
