"""The starter matcher as one torch module, the constants that fix its recipe, and the
helpers that fill its text tables and calibration.

Kept apart from the export (`export.starter`) so that the plain baseline
(`export.starter_report`) measures the same embeddings, inputs and calibration fit
as the bundle, not copies of them; the recipe as a whole is described in
`export.starter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from export.parity import Feeds
from export.starter_set import LabelledPair
from worker.errors import ExportError
from worker.preprocess import ImageSpec, TextEncoder, preprocess_images

__all__ = [
    "ARCHITECTURE",
    "CAPTION_NEIGHBOURS",
    "CHECKPOINT_NAME",
    "IMAGE_FIELDS",
    "IMAGE_NEIGHBOURS",
    "LABELLED_BATCH",
    "MAX_TEXT_TOKENS",
    "PROMPTS",
    "SPLIT_ENCODING",
    "THRESHOLD",
    "StarterImage",
    "StarterMatcher",
    "StarterText",
    "class_text_embeddings",
    "embed_texts",
    "fit_logistic",
    "fit_on_tune",
    "pair_feeds",
    "text_fields",
]

ARCHITECTURE = "StarterZeroShot(EfficientNet-Lite0+all-MiniLM-L6-v2)"

CHECKPOINT_NAME = "starter"
"""What the starter export's errors name as their checkpoint: there is no checkpoint path."""

IMAGE_FIELDS: dict[str, Any] = {
    "height": 224,
    "width": 224,
    "resize": "exact",
    "crop": None,
    "resample": "bicubic",
    "rescale_factor": 1 / 255,
    "mean": [127 / 255] * 3,
    "std": [128 / 255] * 3,
}
"""EfficientNet-Lite's own input: (x - 127) / 128 at 224 px, bicubic; without its centre
crop, which the bundle contract cannot express."""

MAX_TEXT_TOKENS = 256
"""all-MiniLM-L6-v2's sentence-transformers limit (its positions allow 512)."""

PROMPTS = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
)
"""Prompts naming each ImageNet class; a class's text embedding is their normalised mean."""

CAPTION_NEIGHBOURS = 50
"""A caption's hubness: its mean similarity to this many nearest class prompts."""

IMAGE_NEIGHBOURS = 10
"""An image's hubness: the mean of its this many best reference-sentence scores."""

THRESHOLD = 0.5
"""The calibrated probability's own decision point: with the tune split's balanced labels,
P(match) >= 0.5 is the likelier verdict. Picking the threshold of best tune accuracy
instead fits one more number to 88 pairs, and carries over worse: leave-one-photo-out on
the tune split gave accuracy 0.830 at 0.5 against 0.807 at the best-accuracy threshold."""

SPLIT_ENCODING = ("image_text", "image_centre", "image_spread")
"""The image graph's outputs in the two-graph form: `v`, and its reference scores' centre and
spread."""

LABELLED_BATCH = 16
"""Pairs per batch when the labelled set is scored."""


class StarterMatcher(torch.nn.Module):
    """The zero-shot matcher as one module: pixels, token ids and mask in, match probability out."""

    class_text: torch.Tensor
    reference_text: torch.Tensor
    reference_offset: torch.Tensor
    calibration: torch.Tensor

    def __init__(
        self,
        classifier: Any,
        text_model: Any,
        *,
        caption_neighbours: int = CAPTION_NEIGHBOURS,
        image_neighbours: int = IMAGE_NEIGHBOURS,
    ) -> None:
        super().__init__()
        self.classifier: Any = classifier
        self.text_model: Any = text_model
        self.caption_neighbours = caption_neighbours
        self.image_neighbours = image_neighbours
        n_classes = int(classifier._fc.out_features)
        width = int(text_model.config.hidden_size)
        # Filled by set_texts() and set_calibration(); buffers so they travel into the graph.
        self.register_buffer("class_text", torch.zeros(n_classes, width))
        self.register_buffer("reference_text", torch.zeros(n_classes, width))
        self.register_buffer("reference_offset", torch.zeros(n_classes))
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings, (batch, width)."""
        output = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = output.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def class_probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k class distribution, averaged over the picture and its mirror image."""
        both = torch.cat([pixel_values, torch.flip(pixel_values, dims=[3])])
        classifier = self.classifier
        features = classifier._avg_pooling(classifier.extract_features(both)).flatten(1)
        probabilities = torch.softmax(classifier._fc(features), dim=-1)
        plain, mirrored = probabilities.chunk(2)
        return (plain + mirrored) / 2

    def set_texts(self, class_text: torch.Tensor, reference_text: torch.Tensor) -> None:
        """Store the class and reference embeddings and the references' own hubness."""
        self.class_text.copy_(F.normalize(class_text, dim=-1))
        self.reference_text.copy_(F.normalize(reference_text, dim=-1))
        self.reference_offset.copy_(self._caption_hubness(self.reference_text))

    def set_calibration(self, scale: float, bias: float) -> None:
        self.calibration.copy_(torch.tensor([scale, bias]))

    def _caption_hubness(self, text: torch.Tensor) -> torch.Tensor:
        similarity = text @ self.class_text.T
        return similarity.topk(self.caption_neighbours, dim=-1).values.mean(-1)

    def encode_image(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The picture as text, `v` (batch, width), and its standardisation: the centre and
        spread of its reference scores, (batch,) each. The two-graph form's image graph."""
        image = self.class_probabilities(pixel_values) @ self.class_text
        reference = image @ self.reference_text.T - self.reference_offset
        centre = reference.topk(self.image_neighbours, dim=-1).values.mean(-1)
        spread = reference.std(dim=-1, unbiased=False)
        return image, centre, spread

    def text_evidence(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image: torch.Tensor,
        centre: torch.Tensor,
        spread: torch.Tensor,
    ) -> torch.Tensor:
        """z for captions against pictures already encoded by `encode_image`."""
        caption = self.embed_text(input_ids, attention_mask)
        score = (caption * image).sum(-1) - self._caption_hubness(caption)
        return (score - centre) / spread

    def evidence(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The uncalibrated match score z, (batch,): higher means a better match."""
        return self.text_evidence(input_ids, attention_mask, *self.encode_image(pixel_values))

    def calibrated(self, z: torch.Tensor) -> torch.Tensor:
        """P(match) from the evidence z."""
        return torch.sigmoid(self.calibration[0] * z + self.calibration[1])

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Probability that each image matches its caption, float32 of shape (batch,)."""
        return self.calibrated(self.evidence(pixel_values, input_ids, attention_mask))


class StarterImage(torch.nn.Module):
    """The image graph of the starter's two-graph form: pixels to `encode_image`'s three."""

    def __init__(self, matcher: StarterMatcher) -> None:
        super().__init__()
        self.matcher = matcher

    def forward(
        self, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.matcher.encode_image(pixel_values)


class StarterText(torch.nn.Module):
    """The text graph of the starter's two-graph form: captions against encoded pictures."""

    def __init__(self, matcher: StarterMatcher) -> None:
        super().__init__()
        self.matcher = matcher

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image: torch.Tensor,
        centre: torch.Tensor,
        spread: torch.Tensor,
    ) -> torch.Tensor:
        z = self.matcher.text_evidence(input_ids, attention_mask, image, centre, spread)
        return self.matcher.calibrated(z)


def text_fields(tokenizer: Tokenizer) -> dict[str, Any]:
    """bundle.json's `text` object for MiniLM's tokenizer.

    Raises:
        ExportError: the tokenizer has no [PAD] token to pad batches with.
    """
    pad_id = tokenizer.token_to_id("[PAD]")
    if pad_id is None:
        raise ExportError(CHECKPOINT_NAME, "MiniLM's tokenizer has no [PAD] token")
    return {"max_tokens": MAX_TEXT_TOKENS, "pad_token": "[PAD]", "pad_id": int(pad_id)}


def embed_texts(
    matcher: StarterMatcher, encoder: TextEncoder, texts: Sequence[str], batch: int = 128
) -> torch.Tensor:
    """Sentence embeddings of `texts`, in order; batched by length, so little is padding."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    out = torch.empty(len(texts), int(matcher.class_text.shape[1]))
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            chosen = order[start : start + batch]
            ids, mask = encoder.encode([texts[i] for i in chosen])
            out[chosen] = matcher.embed_text(torch.from_numpy(ids), torch.from_numpy(mask))
    return out


def class_text_embeddings(
    matcher: StarterMatcher, encoder: TextEncoder, names: Sequence[str]
) -> torch.Tensor:
    """Each class's text embedding: the normalised mean over `PROMPTS` naming it."""
    prompts = [prompt.format(name) for prompt in PROMPTS for name in names]
    embedded = embed_texts(matcher, encoder, prompts).reshape(len(PROMPTS), len(names), -1)
    return F.normalize(embedded.mean(0), dim=-1)


def pair_feeds(
    pairs: Sequence[LabelledPair], image: ImageSpec, encoder: TextEncoder
) -> list[Feeds]:
    """The labelled pairs as model inputs, built by the worker's own preprocessing."""
    feeds = []
    for start in range(0, len(pairs), LABELLED_BATCH):
        chunk = pairs[start : start + LABELLED_BATCH]
        ids, mask = encoder.encode([p.caption for p in chunk])
        feeds.append(
            {
                "pixel_values": preprocess_images([p.image for p in chunk], image),
                "input_ids": ids,
                "attention_mask": mask,
            }
        )
    return feeds


def fit_logistic(
    z: np.ndarray, labels: np.ndarray, *, iterations: int = 100
) -> tuple[float, float]:
    """Scale and bias of P(match) = sigmoid(scale·z + bias) by maximum likelihood (Newton)."""
    x = np.stack([np.asarray(z, dtype=np.float64), np.ones(len(z))], axis=1)
    y = np.asarray(labels, dtype=np.float64)
    w = np.zeros(2)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(x @ w)))
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, x.T @ (y - p))
        w += step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def fit_on_tune(z: np.ndarray, pairs: Sequence[LabelledPair]) -> tuple[float, float]:
    """`fit_logistic` on the tune split's pairs only, so holdout figures stay unbiased."""
    labels = np.array([p.label for p in pairs])
    tune = np.array([p.split == "tune" for p in pairs])
    return fit_logistic(z[tune], labels[tune])
