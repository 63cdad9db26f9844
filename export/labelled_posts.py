"""A labelled file scored through the worker's own front door, line by line.

A labelled post is a post event plus `label`: 1 when image and caption match,
0 when they do not (`itmguard review export-labels` writes them). Each line is
scored by `worker.judge.judge_batches`, as the worker would score the post, so a
threshold picked on these scores means the same on the worker's verdicts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from worker.config import DEFAULT_FETCH_LIMITS, FetchLimits
from worker.fetch import ImageFetcher
from worker.judge import judge_batches
from worker.scoring import Scorer
from worker.verdicts import Record

__all__ = ["Labelled", "Skipped", "score_labelled"]


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
    pending: list[list[_Line]] = []

    def records() -> Iterator[list[Record]]:
        for batch in _batches(lines(), batch_size):
            pending.append(batch)
            yield [Record(x.payload, topic=str(path), offset=x.number) for x in batch]

    for outcomes in judge_batches(records(), scorer, ImageFetcher(limits), limits):
        for line, outcome in zip(pending.pop(0), outcomes, strict=True):
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
