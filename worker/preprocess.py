"""Model inputs from pictures and captions: the one place both export and worker use.

The export step records an `ImageSpec` and a `TextSpec` read from the
checkpoint's own processor; the worker rebuilds the inputs from them here, so
the two sides agree by construction rather than by keeping two copies in step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

__all__ = ["RESAMPLE", "ImageSpec", "TextEncoder", "TextSpec", "preprocess_images"]

RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class ImageSpec:
    """How a picture becomes `pixel_values`: exact resize, rescale, normalise (NCHW)."""

    height: int
    width: int
    resample: str
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_fields(cls, image: Mapping[str, Any]) -> ImageSpec:
        """From bundle.json's `image` object (checked against the bundle schema first)."""
        return cls(
            height=image["height"],
            width=image["width"],
            resample=image["resample"],
            rescale_factor=image["rescale_factor"],
            mean=tuple(image["mean"]),
            std=tuple(image["std"]),
        )


@dataclass(frozen=True)
class TextSpec:
    """How a caption becomes `input_ids` and `attention_mask`."""

    max_tokens: int
    pad_token: str
    pad_id: int


def preprocess_images(images: Sequence[Image.Image], spec: ImageSpec) -> np.ndarray:
    """Stack RGB pictures into one float32 array of shape (N, 3, height, width)."""
    out = np.empty((len(images), 3, spec.height, spec.width), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    for i, image in enumerate(images):
        resized = image.resize((spec.width, spec.height), resample=RESAMPLE[spec.resample])
        pixels = (np.asarray(resized, dtype=np.float64) * spec.rescale_factor).astype(np.float32)
        out[i] = ((pixels - mean) / std).transpose(2, 0, 1)
    return out


class TextEncoder:
    """Tokenises captions with the checkpoint's own tokenizer, padded to the batch's longest.

    The exported graphs have dynamic sequence axes and the attention mask hides the
    padding, so a batch of short captions costs short sequences. `min_length` pads
    further where a runtime needs it (a TensorRT profile's minimum sequence);
    `pad_to_max=True` pads every batch to `max_tokens`, the old behaviour, kept for
    comparison.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        spec: TextSpec,
        *,
        min_length: int = 1,
        pad_to_max: bool = False,
    ) -> None:
        self._tokenizer = tokenizer
        self._tokenizer.enable_truncation(max_length=spec.max_tokens)
        self._tokenizer.enable_padding(
            pad_id=spec.pad_id,
            pad_token=spec.pad_token,
            length=spec.max_tokens if pad_to_max else None,
        )
        self.spec = spec
        self.min_length = min(min_length, spec.max_tokens)

    @classmethod
    def from_file(
        cls, path: Path, spec: TextSpec, *, min_length: int = 1, pad_to_max: bool = False
    ) -> TextEncoder:
        return cls(
            Tokenizer.from_file(str(path)), spec, min_length=min_length, pad_to_max=pad_to_max
        )

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`(input_ids, attention_mask)`, both int64 of shape (N, max(longest, min_length))."""
        encodings = self._tokenizer.encode_batch(list(captions))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        short = self.min_length - ids.shape[-1]
        if encodings and short > 0:
            ids = np.pad(ids, ((0, 0), (0, short)), constant_values=self.spec.pad_id)
            mask = np.pad(mask, ((0, 0), (0, short)), constant_values=0)
        return ids, mask
