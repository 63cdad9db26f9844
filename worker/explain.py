"""Why a post was flagged: which words of its caption the image contradicts.

For each mismatch, the caption is scored again with one content word or
phrase left out; the phrases whose removal raises the match probability most
are the likely culprits ("a red double-decker bus in London" under a photo of
a cat: leaving out "red double-decker bus" raises it most). Phrases come from
simple rules on the caption's words: a word is a run of letters and digits,
joined across a hyphen or an apostrophe ("double-decker", "children's");
stop words and punctuation never stand alone; a phrase is a maximal run of
content words, and each word of a longer phrase is tried on its own too.

The variants of a whole batch's mismatches go to the model in one call
(`explain_batch`); a scorer that can score captions against pictures it has
encoded already (`VariantScorer`, the two-graph bundles) saves re-running the
image encoder for every variant. Posts that are not mismatches cost nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import structlog
from PIL import Image

if TYPE_CHECKING:
    from worker.scoring import Scorer

__all__ = [
    "BATCH_SHARE",
    "STOP_WORDS",
    "Explanation",
    "Phrase",
    "VariantScorer",
    "candidate_spans",
    "explain_batch",
    "leave_out",
    "phrases",
    "words",
]

log = structlog.get_logger(__name__)

_FUNCTION_WORDS = """
    a an the this that these those some any each every no not
    and or but nor so yet of in on at to by for from with without into onto over under
    above below near beside between behind through about against along across up down off
    is are was were be been being am has have had do does did will would can could
    it its i me my we our you your he him his she her they them their there here
    as than then very just also only too what which who whom whose where when how
"""
STOP_WORDS = frozenset(_FUNCTION_WORDS.split())
"""Function words: they never form a phrase on their own."""

BATCH_SHARE = 2
"""Variants per post of a batch that the batch's flagged posts share at most: when most of a
batch is flagged (a flood of mismatches), explaining it costs at most twice its own rows."""

_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_SPACES = re.compile(r"\s+")
_CULPRIT_SHARE = 0.5
"""A phrase is highlighted beside the top one when its removal gains at least this share of
the top phrase's gain in log-odds."""


@dataclass(frozen=True)
class Phrase:
    """One tried phrase: its characters in the caption, and what leaving it out did.

    `delta` is the match probability without the phrase minus the caption's own; the larger,
    the more the image contradicts the phrase.
    """

    text: str
    start: int
    end: int
    delta: float

    def as_json(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end, "delta": self.delta}


@dataclass(frozen=True)
class Explanation:
    """The phrases tried for one flagged post, the most contradicted first."""

    score: float
    phrases: tuple[Phrase, ...]

    def gain(self, phrase: Phrase) -> float:
        """How much leaving `phrase` out raised the log-odds of a match. It orders phrases as
        `delta` does, but compares them on a scale where a model all but certain of the
        mismatch (probabilities near 0) still tells a large step from a small one."""
        return _log_odds(self.score + phrase.delta) - _log_odds(self.score)

    @property
    def culprits(self) -> tuple[Phrase, ...]:
        """The phrases to highlight: the top one when leaving it out raises the match
        probability, and any other, not overlapping a higher one, that gains at least half
        as much log-odds."""
        if not self.phrases or self.gain(self.phrases[0]) <= 0:
            return ()
        floor = self.gain(self.phrases[0]) * _CULPRIT_SHARE
        chosen: list[Phrase] = []
        for phrase in self.phrases:
            if self.gain(phrase) < floor:
                break
            if all(phrase.end <= c.start or phrase.start >= c.end for c in chosen):
                chosen.append(phrase)
        return tuple(chosen)

    def as_json(self) -> dict[str, Any]:
        """As stored with the review item and sent in the flag: the caption's score, then
        every phrase tried (character offsets into the caption), most contradicted first."""
        return {
            "method": "leave_one_out",
            "score": self.score,
            "phrases": [p.as_json() for p in self.phrases],
            "culprits": [p.as_json() for p in self.culprits],
        }


@runtime_checkable
class VariantScorer(Protocol):
    """A scorer that explains: scores caption variants against pictures of the batch.

    `explain_variants` caps the variants per flagged post; 0 turns explanations off.
    """

    explain_variants: int

    def score_variants(
        self, images: Sequence[Image.Image], captions: Sequence[str], image_of: Sequence[int]
    ) -> np.ndarray:
        """Match probability of each `captions[i]` against `images[image_of[i]]`, in one
        model call (or as few as the provider allows); NaN where the model failed."""
        ...


def words(caption: str) -> list[tuple[int, int]]:
    """The (start, end) character span of every word of `caption`, in order."""
    return [m.span() for m in _WORD.finditer(caption)]


def phrases(caption: str) -> list[list[tuple[int, int]]]:
    """The caption's phrases, in order: maximal runs of content words, each as its words'
    spans. A stop word or punctuation between two words ends a run."""
    runs: list[list[tuple[int, int]]] = [[]]
    for start, end in words(caption):
        if caption[start:end].lower() in STOP_WORDS:
            runs.append([])
        elif runs[-1] and caption[runs[-1][-1][1] : start].strip() != "":
            runs.append([(start, end)])
        else:
            runs[-1].append((start, end))
    return [run for run in runs if run]


def candidate_spans(caption: str, limit: int) -> list[tuple[int, int]]:
    """At most `limit` spans to leave out, in the order they are worth trying.

    First every phrase, then each word of a phrase longer than one word, in caption
    order; a span is tried once.
    """
    runs = phrases(caption)
    whole = [(run[0][0], run[-1][1]) for run in runs]
    singles = [word for run in runs if len(run) > 1 for word in run]
    return list(dict.fromkeys([*whole, *singles]))[: max(limit, 0)]


def leave_out(caption: str, span: tuple[int, int]) -> str:
    """`caption` without the characters of `span`, runs of white space made one."""
    start, end = span
    return _SPACES.sub(" ", f"{caption[:start]} {caption[end:]}").strip()


def explain_batch(
    scorer: Scorer,
    images: Sequence[Image.Image],
    captions: Sequence[str],
    scores: Sequence[float],
) -> list[Explanation | None]:
    """An explanation for each mismatch of a scored batch, None for every other post.

    `scorer` explains only when it is a `VariantScorer` with `explain_variants` above 0.
    The flagged posts share a budget of `BATCH_SHARE` variants per post of the batch (or
    `explain_variants`, when the batch is smaller), so a batch that is mostly mismatches
    costs at most a second model call of twice its size; the variants of all flagged
    posts go to the model together. A flagged post whose caption has no content word gets
    no explanation. A failing model call leaves the batch unexplained, never unscored.
    """
    out: list[Explanation | None] = [None] * len(captions)
    if not isinstance(scorer, VariantScorer) or scorer.explain_variants <= 0:
        return out
    flagged = [i for i, s in enumerate(scores) if not math.isnan(s) and s < float(scorer.threshold)]
    if not flagged:
        return out
    share = max(BATCH_SHARE * len(captions), scorer.explain_variants) // len(flagged)
    budget = min(scorer.explain_variants, max(1, share))
    spans = {i: candidate_spans(captions[i], budget) for i in flagged}
    variants = [(i, span) for i in flagged for span in spans[i]]
    if not variants:
        return out
    pictures = sorted({i for i, _ in variants})
    slot = {i: n for n, i in enumerate(pictures)}
    try:
        varied = scorer.score_variants(
            [images[i] for i in pictures],
            [leave_out(captions[i], span) for i, span in variants],
            [slot[i] for i, _ in variants],
        )
    except Exception as exc:  # noqa: BLE001 - the model's own errors are not ours to name
        log.warning("explain_failed", flagged=len(flagged), error=type(exc).__name__)
        return out
    tried: dict[int, list[Phrase]] = {i: [] for i in pictures}
    for (i, (start, end)), value in zip(variants, varied, strict=True):
        if not math.isnan(float(value)):
            delta = float(value) - float(scores[i])
            tried[i].append(Phrase(captions[i][start:end], start, end, delta))
    for i, found in tried.items():
        ranked = sorted(found, key=lambda p: (-p.delta, p.start))
        out[i] = Explanation(score=float(scores[i]), phrases=tuple(ranked))
    return out


def _log_odds(probability: float) -> float:
    """log(p / (1 - p)), kept finite at 0 and 1."""
    p = min(max(probability, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))
