"""Figures of the starter on its labelled set, outside the export: a built bundle scored
as the worker scores it, and the plain top-5-classes baseline it is compared with.

`python -m export.starter --evaluate BUNDLE` and `--baseline` print them (`main`).
Nothing here shapes a bundle, so the demo's cached starter bundle, named after
the recipe's source, is not rebuilt when only this module changes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.starter_model import (
    IMAGE_FIELDS,
    LABELLED_BATCH,
    PROMPTS,
    THRESHOLD,
    StarterMatcher,
    embed_texts,
    fit_on_tune,
    pair_feeds,
    text_fields,
)
from export.starter_parts import load_parts
from export.starter_set import SPLITS, LabelledPair, figures_by_split, load_labelled
from worker.bundle import load_bundle
from worker.preprocess import ImageSpec, TextEncoder, TextSpec
from worker.scoring import OnnxScorer

__all__ = ["baseline_report", "evaluate_bundle", "main"]


def evaluate_bundle(
    path: Path | str, *, pairs: Sequence[LabelledPair] | None = None
) -> dict[str, Any]:
    """ROC AUC and accuracy at the bundle's threshold on each split, scored as the worker scores.

    Raises:
        BundleError: the bundle does not load.
        ExportError: a photo's package is not installed.
    """
    scorer = OnnxScorer(load_bundle(path), providers=("cpu",))
    pairs = load_labelled() if pairs is None else pairs
    batches = [pairs[i : i + LABELLED_BATCH] for i in range(0, len(pairs), LABELLED_BATCH)]
    scores = np.concatenate(
        [scorer.score([p.image for p in b], [p.caption for p in b]) for b in batches]
    )
    return {
        "model_id": scorer.model_id,
        "threshold": scorer.threshold,
        **figures_by_split(scores, pairs, scorer.threshold),
    }


def baseline_report() -> dict[str, Any]:
    """The plain top-5-classes version, measured the same way, for comparison.

    Caption embedding against the probability-weighted mean of its image's five
    likeliest classes' "a photo of a {class}." embeddings; one picture, no
    hubness correction; logistic calibration on the tune split, threshold 0.5.
    """
    parts = load_parts()
    pairs = load_labelled()
    image = ImageSpec.from_fields(IMAGE_FIELDS)
    encoder = TextEncoder(parts.tokenizer, TextSpec(**text_fields(parts.tokenizer)))
    matcher = StarterMatcher(parts.classifier, parts.text_model).eval()
    classes = embed_texts(matcher, encoder, [PROMPTS[0].format(n) for n in parts.class_names])
    scores = []
    with torch.inference_mode():
        for feed in pair_feeds(pairs, image, encoder):
            logits = parts.classifier(torch.from_numpy(feed["pixel_values"]))
            top = torch.softmax(logits, dim=-1).topk(5, dim=-1)
            weights = top.values / top.values.sum(-1, keepdim=True)
            caption = matcher.embed_text(
                torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])
            )
            similarity = (classes[top.indices] * caption[:, None, :]).sum(-1)
            scores.append((weights * similarity).sum(-1).numpy())
    z = np.concatenate(scores)
    scale, bias = fit_on_tune(z, pairs)
    probabilities = 1 / (1 + np.exp(-(scale * z + bias)))
    return {
        "model_id": "plain-top5",
        "threshold": THRESHOLD,
        **figures_by_split(probabilities, pairs, THRESHOLD),
    }


def _print_report(report: dict[str, Any]) -> None:
    print(f"{report['model_id']}: threshold {report['threshold']:.3f}")
    for name in SPLITS:
        if name in report:
            strata = report[name]["strata"].items()
            rows = [(name, report[name]), *((f"  {s}", g) for s, g in strata)]
            for label, f in rows:
                print(
                    f"  {label:12s} ROC AUC {f['roc_auc']:.3f}  accuracy {f['accuracy']:.3f}  "
                    f"({f['pairs']} pairs, {f['photos']} photos)"
                )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m export.starter --evaluate BUNDLE` or `--baseline`: print the set's figures."""
    parser = argparse.ArgumentParser(prog="python -m export.starter", description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--evaluate",
        metavar="BUNDLE",
        type=Path,
        help="score the labelled set with this bundle through OnnxScorer",
    )
    group.add_argument(
        "--baseline",
        action="store_true",
        help="measure the plain top-5-classes version (PyTorch) on the set",
    )
    args = parser.parse_args(argv)
    _print_report(evaluate_bundle(args.evaluate) if args.evaluate else baseline_report())
    return 0
