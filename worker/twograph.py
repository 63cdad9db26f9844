"""A bundle's two-graph form in ONNX Runtime: encode pictures once, score many captions.

The image graph turns pixel values into the picture's encoding (BLIP: its image
embeddings; the starter: its class-text vector and standardisation figures); the
text graph scores token ids against an encoding. On the CPU a batch's primary
score goes through the two graphs too (`score_batch`), and its pictures'
encodings are kept, so explaining its mismatches runs the text graph alone; on a
GPU the primary score stays model.onnx's, through the IO binding and TensorRT,
and the flagged pictures are encoded again. The two sessions take the scorer's
providers without TensorRT, whose shape profiles are made for model.onnx's inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from worker.bundle import Bundle
from worker.config import DEFAULT_TENSORRT
from worker.errors import BundleFieldError
from worker.providers import ORT_PROVIDERS, provider_options

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["TwoGraphs"]


class TwoGraphs:
    """The image and text sessions of a two-graph bundle."""

    def __init__(
        self,
        bundle: Bundle,
        paths: tuple[Path, Path],
        providers: Sequence[str],
        options: ort.SessionOptions,
    ) -> None:
        """Open both graphs of `bundle` with `providers` (ONNX Runtime's names). ONNX
        Runtime is imported here, after `worker.scoring` has said which extra provides it.

        Raises:
            BundleFieldError: a graph's inputs or outputs differ from bundle.json's `graphs`.
        """
        spec = bundle.spec
        assert spec.graphs is not None
        self._spec = spec
        self.encoding = spec.graphs.encoding
        names = [p for p in providers if p != ORT_PROVIDERS["tensorrt"]] or [ORT_PROVIDERS["cpu"]]
        chosen: list[Any] = list(
            zip(names, provider_options(names, spec, None, DEFAULT_TENSORRT), strict=True)
        )
        import onnxruntime as ort

        image_path, text_path = paths
        self._image = ort.InferenceSession(str(image_path), sess_options=options, providers=chosen)
        self._text = ort.InferenceSession(str(text_path), sess_options=options, providers=chosen)
        self._check(bundle)
        self._kept: tuple[list[Image.Image], list[np.ndarray]] = ([], [])

    def _check(self, bundle: Bundle) -> None:
        spec = self._spec
        image_in = {i.name for i in self._image.get_inputs()}
        image_out = {o.name for o in self._image.get_outputs()}
        text_in = {i.name for i in self._text.get_inputs()}
        text_out = {o.name for o in self._text.get_outputs()}
        wanted_text = {spec.input_names["input_ids"], spec.input_names["attention_mask"]}
        if (
            image_in != {spec.input_names["pixel_values"]}
            or not set(self.encoding) <= image_out
            or text_in != wanted_text | set(self.encoding)
            or spec.output_name not in text_out
        ):
            raise BundleFieldError(
                str(bundle.path),
                f"the two graphs take {sorted(image_in)} → {sorted(image_out)} and "
                f"{sorted(text_in)} → {sorted(text_out)}, which do not fit bundle.json's "
                f"inputs, output {spec.output_name!r} and encoding {list(self.encoding)}",
            )

    def encode(self, pixels: np.ndarray) -> list[np.ndarray]:
        """The encoding of each picture, one array per name of `encoding`, batch first."""
        feed = {self._spec.input_names["pixel_values"]: pixels}
        return [np.asarray(out) for out in self._image.run(list(self.encoding), feed)]

    def score(
        self, encoding: Sequence[np.ndarray], ids: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        """Match probabilities of each tokenised caption against the encoding in its row."""
        spec = self._spec
        feed = {
            spec.input_names["input_ids"]: ids,
            spec.input_names["attention_mask"]: mask,
            **dict(zip(self.encoding, encoding, strict=True)),
        }
        (out,) = self._text.run([spec.output_name], feed)
        return np.asarray(out, dtype=np.float64).reshape(len(ids))

    def score_batch(
        self, images: Sequence[Image.Image], pixels: np.ndarray, ids: np.ndarray, mask: np.ndarray
    ) -> np.ndarray:
        """A batch's match probabilities, pair by pair; its pictures' encodings are kept
        until the next batch, for the explanations of its mismatches."""
        encoding = self.encode(pixels)
        self._kept = (list(images), encoding)
        return self.score(encoding, ids, mask)

    def encodings_of(
        self,
        images: Sequence[Image.Image],
        pixels_of: Callable[[Sequence[Image.Image]], np.ndarray],
    ) -> list[np.ndarray]:
        """The encoding of each of `images`: kept from the last batch when that batch held
        the same picture object, encoded now (from `pixels_of`'s pixels) otherwise."""
        kept_images, kept = self._kept
        slot = {id(image): row for row, image in enumerate(kept_images)}
        missing = [image for image in images if id(image) not in slot]
        if not missing:
            rows = np.asarray([slot[id(image)] for image in images], dtype=np.int64)
            return [e[rows] for e in kept]
        fresh = self.encode(pixels_of(missing))
        if len(missing) == len(images):
            return fresh
        slot |= {id(image): len(kept_images) + row for row, image in enumerate(missing)}
        rows = np.asarray([slot[id(image)] for image in images], dtype=np.int64)
        return [np.concatenate([k, f])[rows] for k, f in zip(kept, fresh, strict=True)]
