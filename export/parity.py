"""Check that an exported model scores as the model it came from.

Every side is fed the same arrays, built by the worker's own preprocessing
(`worker.preprocess`) from the bundle's recorded specs, so a passing check
says the bundle scores as the checkpoint does *through the path the worker
takes*, not through a second copy of the preprocessing kept in step by hand.

The parity set mimics production: pictures of many sizes and aspect ratios
with detail for resampling to get wrong, batches of 1 to 32, and captions
from one word to past the token limit (so truncation and padding are both
in the graph's path).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

from worker.bundle import BundleSpec
from worker.preprocess import TextEncoder, preprocess_images

__all__ = [
    "PARITY_BATCHES",
    "Feeds",
    "Parity",
    "batch_scores",
    "compare",
    "parity_feeds",
    "parity_pairs",
    "session_scores",
]

PARITY_BATCHES = (1, 2, 4, 8, 16, 32)
"""Batch sizes of the parity set, 63 pairs in all."""

Feeds = dict[str, np.ndarray]
"""One batch of model inputs keyed by role: pixel_values, input_ids, attention_mask."""

# Words of everyday captions, so the parity set's captions tokenise like posted ones.
_CAPTION_WORDS = """
    a an the two three small large red green blue yellow white black dog cat man woman
    child people car bus bicycle street beach sea sky mountain tree flower table chair
    plate pizza cake bowl of with on in at next to near under above holding sitting
    standing riding playing eating looking bright dark old young wooden metal photo
    picture view close-up group sunny cloudy night city park kitchen room window door
"""
_WORDS = _CAPTION_WORDS.split()


@dataclass(frozen=True)
class Parity:
    """How far a candidate's scores are from the reference's, and whether verdicts agree."""

    max_abs_diff: float
    mean_abs_diff: float
    decision_agreement: float
    n_pairs: int
    tolerance: float | None
    threshold: float

    @property
    def ok(self) -> bool:
        """True when every pair is within tolerance (False on NaN); a check without one passes."""
        return self.tolerance is None or self.max_abs_diff <= self.tolerance

    def as_manifest(self) -> dict[str, float | int | None]:
        """The figures as bundle.json reports them."""
        return {
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "decision_agreement": self.decision_agreement,
            "n_pairs": self.n_pairs,
            "tolerance": self.tolerance,
            "threshold": self.threshold,
        }


def _picture(rng: random.Random, seed: int) -> Image.Image:
    width, height = rng.randint(24, 640), rng.randint(24, 640)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    tint = np.array([rng.random() for _ in range(6)]).reshape(2, 3)
    base = 255 * (0.2 + 0.5 * x * tint[0] + 0.3 * y * tint[1])
    noise = np.random.default_rng(seed).normal(0, 10, (height, width, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 4)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randint(4, width), y0 + rng.randint(4, height))
        fill = tuple(rng.randrange(256) for _ in range(3))
        rng.choice([draw.ellipse, draw.rectangle])(box, fill=fill)
    return image


def _caption_lengths(rng: random.Random, batch: int, max_tokens: int) -> list[int]:
    """Word counts for one batch: the small batches carry the longest captions."""
    if batch == 1:
        return [max_tokens + 5]
    if batch == 2:
        return [1, max(1, max_tokens // 2)]
    longest = max_tokens if batch <= 8 else min(max_tokens, 40)
    return [rng.randint(1, longest) for _ in range(batch)]


def parity_pairs(
    max_tokens: int, *, seed: int = 0, batches: Sequence[int] = PARITY_BATCHES
) -> list[tuple[list[Image.Image], list[str]]]:
    """The parity set as batches of (pictures, captions), the same for the same arguments."""
    rng = random.Random(seed)
    out: list[tuple[list[Image.Image], list[str]]] = []
    for batch in batches:
        images = [_picture(rng, seed * 1000 + len(out) * 64 + i) for i in range(batch)]
        captions = [
            " ".join(rng.choice(_WORDS) for _ in range(n))
            for n in _caption_lengths(rng, batch, max_tokens)
        ]
        out.append((images, captions))
    return out


def parity_feeds(spec: BundleSpec, encoder: TextEncoder, *, seed: int = 0) -> list[Feeds]:
    """The parity set turned into model inputs by the worker's own preprocessing."""
    feeds = []
    for images, captions in parity_pairs(spec.text.max_tokens, seed=seed):
        input_ids, attention_mask = encoder.encode(captions)
        feeds.append(
            {
                "pixel_values": preprocess_images(images, spec.image),
                "input_ids": input_ids,
                "attention_mask": attention_mask,
            }
        )
    return feeds


def session_scores(
    session: ort.InferenceSession, spec: BundleSpec, feeds: Sequence[Feeds]
) -> np.ndarray:
    """Match probabilities from an ONNX Runtime session, all batches concatenated."""
    return batch_scores(
        lambda batch: session.run(
            [spec.output_name], {spec.input_names[role]: v for role, v in batch.items()}
        )[0],
        feeds,
    )


def batch_scores(run: Callable[[Feeds], np.ndarray], feeds: Sequence[Feeds]) -> np.ndarray:
    """`run` over every batch, its match probabilities concatenated."""
    return np.concatenate([np.asarray(run(batch), dtype=np.float64).reshape(-1) for batch in feeds])


def compare(
    expected: np.ndarray, actual: np.ndarray, *, tolerance: float | None, threshold: float
) -> Parity:
    """Differences between two score vectors, and how often they give the same verdict."""
    diffs = np.abs(actual - expected)
    return Parity(
        max_abs_diff=float(diffs.max()),
        mean_abs_diff=float(diffs.mean()),
        decision_agreement=float(np.mean((actual < threshold) == (expected < threshold))),
        n_pairs=int(diffs.size),
        tolerance=tolerance,
        threshold=threshold,
    )
