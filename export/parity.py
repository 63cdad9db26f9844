"""Check that an exported model scores as the PyTorch model it came from.

Both sides are fed the same arrays, built by the worker's own preprocessing
(`worker.preprocess`) from the bundle's recorded specs, so a passing check
says the bundle scores as the checkpoint does *through the path the worker
takes*, not through a second copy of the preprocessing kept in step by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw

from worker.bundle import BundleSpec
from worker.preprocess import TextEncoder, preprocess_images

__all__ = ["BATCH_SIZES", "Parity", "Reference", "measure_parity", "sample_pairs"]

BATCH_SIZES = (1, 4)

# Feeds keyed by role (pixel_values, input_ids, attention_mask) → match probabilities.
Reference = Callable[[dict[str, np.ndarray]], np.ndarray]

_CAPTIONS = (
    "a dog",
    "two red circles on a white background",
    "A small blue square in the top-left corner, next to a large yellow triangle!",
    " ".join(["a very long caption that keeps going"] * 20),  # 140 words: truncation
)


@dataclass(frozen=True)
class Parity:
    """How far the exported model's scores are from the reference's."""

    max_abs_diff: float
    mean_abs_diff: float
    n_pairs: int
    tolerance: float

    @property
    def ok(self) -> bool:
        """True when every pair is within tolerance (False on NaN)."""
        return self.max_abs_diff <= self.tolerance

    def as_manifest(self) -> dict[str, float | int]:
        """The figures as bundle.json's `parity` object."""
        return {
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "n_pairs": self.n_pairs,
            "tolerance": self.tolerance,
        }


def sample_pairs() -> tuple[list[Image.Image], list[str]]:
    """Four RGB pictures of different sizes and shapes, with captions of different lengths."""
    sizes = ((37, 53), (64, 64), (300, 200), (120, 480))  # (width, height)
    images = []
    for i, (width, height) in enumerate(sizes):
        image = Image.new("RGB", (width, height), (40 * i, 200 - 30 * i, 90 + 40 * i))
        draw = ImageDraw.Draw(image)
        draw.ellipse((width // 8, height // 8, width // 2, height // 2), fill=(230, 40, 40))
        draw.rectangle((width // 2, height // 2, width - 2, height - 2), fill=(30, 60, 220))
        draw.line((0, height - 1, width - 1, 0), fill=(255, 255, 0), width=3)
        images.append(image)
    return images, list(_CAPTIONS)


def measure_parity(
    reference: Reference,
    session: ort.InferenceSession,
    spec: BundleSpec,
    encoder: TextEncoder,
    *,
    tolerance: float,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> Parity:
    """Score the sample pairs with `reference` and with `session`, batch by batch.

    Args:
        reference: the model being exported, on feeds keyed by input role.
        session: ONNX Runtime session over the exported model.
        spec: the bundle's manifest, for input/output names and preprocessing.
        encoder: the bundle's text encoder (from its tokenizer.json).
        tolerance: the largest absolute difference in probability allowed.
        batch_sizes: each batch scores the first `n` sample pairs (n <= 4).
    """
    images, captions = sample_pairs()
    diffs = []
    for n in batch_sizes:
        input_ids, attention_mask = encoder.encode(captions[:n])
        feeds = {
            "pixel_values": preprocess_images(images[:n], spec.image),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        expected = np.asarray(reference(feeds), dtype=np.float64).reshape(n)
        (actual,) = session.run(
            [spec.output_name], {spec.input_names[role]: v for role, v in feeds.items()}
        )
        diffs.append(np.abs(np.asarray(actual, dtype=np.float64).reshape(n) - expected))
    all_diffs = np.concatenate(diffs)
    return Parity(
        max_abs_diff=float(all_diffs.max()),
        mean_abs_diff=float(all_diffs.mean()),
        n_pairs=int(all_diffs.size),
        tolerance=tolerance,
    )
