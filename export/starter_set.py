"""The starter model's labelled set: real photos that ship inside PyPI packages, with
captions written for them by hand, matching (1) and not (0).

The photos are referenced by distribution, import package and resource path in
`export/starter_data/labelled.json` and read from the installed package; no
image bytes are copied into this repository (sources and licences are in
`export/starter_data/PHOTOS.md` and in the data file). The split is by photo:
`tune` photos choose the calibration and threshold, `holdout` photos are
never used for any choice and only measure. Each photo also names its stratum,
`everyday` or `specialist` (science, texture, document), because an ImageNet-1k
classifier sees the first kind far better than the second, and one figure over
both would hide where the starter model can be trusted; `figures_by_split` keeps
them apart.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from worker.errors import ExportError

__all__ = [
    "DATA_FILE",
    "SPLITS",
    "STRATA",
    "LabelledPair",
    "Photo",
    "accuracy",
    "figures_by_split",
    "load_labelled",
    "load_photos",
    "roc_auc",
]

DATA_FILE = Path(__file__).with_name("starter_data") / "labelled.json"
SPLITS = ("tune", "holdout")
STRATA = ("everyday", "specialist")

Split = Literal["tune", "holdout"]
Stratum = Literal["everyday", "specialist"]


@dataclass(frozen=True)
class Photo:
    """One photo of the set: where it ships, its licence, and its captions."""

    id: str
    distribution: str
    package: str
    resource: str
    split: Split
    stratum: Stratum
    source: str
    licence: str
    captions: tuple[tuple[str, int, str], ...]
    """(caption, label, difficulty); difficulty is "" for matching captions."""

    def path(self) -> Path:
        """The photo file inside its installed package (the package is not imported).

        Raises:
            ExportError: the package is not installed, or lacks the file.
        """
        spec = importlib.util.find_spec(self.package)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        for root in locations:
            candidate = Path(root) / self.resource
            if candidate.is_file():
                return candidate
        raise ExportError(
            "starter",
            f"photo {self.id!r} ships in {self.distribution} ({self.package}/{self.resource}), "
            "which is not installed here: pip install 'itmguard[starter]'",
        )

    def image(self) -> Image.Image:
        """The photo decoded as RGB, as the worker decodes posted images."""
        with Image.open(self.path()) as image:
            return image.convert("RGB")


@dataclass(frozen=True)
class LabelledPair:
    """One (photo, caption) pair with its label and split."""

    image: Image.Image
    caption: str
    label: int
    split: Split
    stratum: Stratum
    photo_id: str
    difficulty: str


def load_photos(path: Path = DATA_FILE) -> list[Photo]:
    """The photos of the labelled set with their captions, in file order."""
    raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return [
        Photo(
            id=p["id"],
            distribution=p["distribution"],
            package=p["package"],
            resource=p["resource"],
            split=p["split"],
            stratum=p["stratum"],
            source=p["source"],
            licence=p["licence"],
            captions=tuple(
                (c["text"], int(c["label"]), c.get("difficulty", "")) for c in p["captions"]
            ),
        )
        for p in raw["photos"]
    ]


def load_labelled(splits: Sequence[str] = SPLITS, *, path: Path = DATA_FILE) -> list[LabelledPair]:
    """Every (image, caption, label, split) pair of the chosen splits, each photo decoded once.

    Raises:
        ExportError: a photo's package is not installed.
    """
    pairs: list[LabelledPair] = []
    for photo in load_photos(path):
        if photo.split not in splits:
            continue
        image = photo.image()
        pairs.extend(
            LabelledPair(image, text, label, photo.split, photo.stratum, photo.id, difficulty)
            for text, label, difficulty in photo.captions
        )
    return pairs


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve: the chance a random match outscores a random mismatch."""
    y = np.asarray(labels, dtype=np.int64)
    if y.min() == y.max():
        raise ValueError("ROC AUC needs both matching and mismatching pairs")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def accuracy(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float
) -> float:
    """Share of pairs whose verdict (match when score >= threshold) is right."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    return float(np.mean((s >= threshold) == (y == 1)))


def figures_by_split(
    scores: np.ndarray, pairs: Sequence[LabelledPair], threshold: float
) -> dict[str, Any]:
    """ROC AUC and accuracy at `threshold` per split and, within it, per stratum.

    bundle.json and the reports show these; the strata are kept apart because the
    starter is far better on everyday photos than on specialist ones.
    """
    labels = np.array([p.label for p in pairs])
    split = np.array([p.split for p in pairs])
    stratum = np.array([p.stratum for p in pairs])

    def measure(chosen: np.ndarray) -> dict[str, Any]:
        return {
            "pairs": int(chosen.sum()),
            "photos": len({p.photo_id for p, c in zip(pairs, chosen, strict=True) if c}),
            "roc_auc": round(roc_auc(scores[chosen], labels[chosen]), 4),
            "accuracy": round(accuracy(scores[chosen], labels[chosen], threshold), 4),
        }

    out: dict[str, Any] = {}
    for name in SPLITS:
        in_split = split == name
        if in_split.any():
            parts = {s: in_split & (stratum == s) for s in STRATA}
            out[name] = {
                **measure(in_split),
                "strata": {s: measure(chosen) for s, chosen in parts.items() if chosen.any()},
            }
    return out
