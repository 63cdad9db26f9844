"""Train a tiny BLIP image-text-matching model on generated shapes and export it as a bundle.

    python -m export.train_tiny --out tests/data/shapes-itm [--seed 0] [--steps N]

No pretrained vision-language weights reach the machines that build
itmguard, so the bundle that tests score with is trained here from scratch,
on pictures from `export.shapes` (with the losses of `export.tiny_training`),
and written through the same `export.blip.export_blip` path (with its parity
gate) as any real checkpoint. The threshold is the best one on a generated
validation split; accuracy is then measured on the exported ONNX bundle, on a
test split drawn from another seed.

The run is single-threaded with deterministic algorithms, fixed seeds and a
fixed data order, so the same seed, steps, library versions and CPU give the
same model.onnx byte for byte. Figures that vary between runs (wall time)
are printed, never written into the bundle.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers import BlipForImageTextRetrieval

from export.blip import export_blip
from export.shapes import Pair, generate_pairs
from export.tiny_training import ModelInputs, Recipe, train
from worker.bundle import Bundle, BundleSpec, load_bundle, write_manifest
from worker.preprocess import preprocess_images
from worker.scoring import OnnxScorer

__all__ = ["accuracy_by_kind", "best_threshold", "build_bundle", "evaluate", "main"]

BUNDLE_NAME = "shapes-itm"
BUNDLE_VERSION = "1"
VALIDATION_PAIRS = 1000
TEST_PAIRS = 2000
_RECIPE = Recipe()
"""`build_bundle`'s default: the recipe the committed bundle was trained with."""


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: train, export to `--out`, print held-out accuracy of the bundle."""
    parser = argparse.ArgumentParser(
        prog="python -m export.train_tiny", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="bundle directory to write (must not exist)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, data and splits")
    parser.add_argument("--steps", type=int, default=Recipe.steps, help="optimiser steps")
    args = parser.parse_args(argv)
    started = time.monotonic()
    spec = build_bundle(args.out, seed=args.seed, recipe=Recipe(steps=args.steps))
    held_out = spec.raw["training"]["held_out"]
    print(
        f"held-out accuracy of the exported bundle ({held_out['n_pairs']} pairs, seed "
        f"{held_out['seed']}, threshold {spec.threshold}):"
    )
    for kind, accuracy in held_out["accuracy"].items():
        print(f"  {kind:<9} {accuracy:.2%}")
    print(f"total {time.monotonic() - started:.0f}s")


def build_bundle(
    out: Path, *, seed: int = 0, recipe: Recipe = _RECIPE, progress: Callable[[str], None] = print
) -> BundleSpec:
    """Train on generated shapes, pick the threshold on validation pairs, export to `out`.

    Returns:
        The bundle's manifest, with `calibration` and `training` sections (the
        latter with the exported bundle's held-out accuracy per kind) that hold
        only figures the same seed reproduces: no timings.
    """
    with tempfile.TemporaryDirectory(prefix="shapes-itm-") as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        model, inputs = train(checkpoint, seed=seed, recipe=recipe, progress=progress)
        validation = generate_pairs(
            VALIDATION_PAIRS, seed=_validation_seed(seed), image_size=recipe.image_size
        )
        scores = _torch_scores(model, inputs, validation)
        labels = np.asarray([p.label for p in validation])
        threshold = best_threshold(scores, labels)
        accuracy = float(np.mean((scores >= threshold) == (labels == 1)))
        progress(
            f"validation: threshold {threshold}, accuracy {accuracy:.2%} on {len(validation)} pairs"
        )
        model.save_pretrained(checkpoint)
        spec = export_blip(
            checkpoint,
            out,
            name=BUNDLE_NAME,
            version=BUNDLE_VERSION,
            threshold=threshold,
            progress=progress,
        )
    calibration = {
        "method": "best accuracy on generated validation pairs (export.shapes)",
        "seed": _validation_seed(seed),
        "n_pairs": VALIDATION_PAIRS,
        "accuracy": round(accuracy, 4),
    }
    test = generate_pairs(TEST_PAIRS, seed=_test_seed(seed), image_size=recipe.image_size)
    held_out = {
        "seed": _test_seed(seed),
        "n_pairs": TEST_PAIRS,
        "accuracy": {kind: round(v, 4) for kind, v in evaluate(load_bundle(out), test).items()},
    }
    training = {
        "script": "export.train_tiny",
        "seed": seed,
        "recipe": asdict(recipe),
        "held_out": held_out,
    }
    return write_manifest(out, {**spec.raw, "calibration": calibration, "training": training})


def _torch_scores(
    model: BlipForImageTextRetrieval, inputs: ModelInputs, pairs: Sequence[Pair]
) -> np.ndarray:
    """Match probabilities from the PyTorch model, fed as the worker feeds the bundle."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(pairs), 100):
            chunk = pairs[start : start + 100]
            ids, mask = inputs.text.encode([p.caption for p in chunk])
            pixels = torch.from_numpy(preprocess_images([p.image for p in chunk], inputs.image))
            logits = model(
                input_ids=torch.from_numpy(ids),
                pixel_values=pixels,
                attention_mask=torch.from_numpy(mask),
                use_itm_head=True,
            ).itm_score
            out.append(torch.softmax(logits, dim=-1)[:, 1].double().numpy())
    return np.concatenate(out)


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold with the best accuracy: the middle of the widest run of best cut points."""
    order = np.sort(np.unique(scores))
    cuts = np.concatenate([[0.0], (order[:-1] + order[1:]) / 2, [1.0]])
    accuracy = np.asarray([np.mean((scores >= c) == (labels == 1)) for c in cuts])
    best = np.flatnonzero(accuracy == accuracy.max())
    return float(round(cuts[best[len(best) // 2]], 6))


def accuracy_by_kind(
    pairs: Sequence[Pair], scores: np.ndarray, threshold: float
) -> dict[str, float]:
    """Share of pairs judged right at `threshold`, overall and for each pair kind."""
    right = (scores >= threshold) == (np.asarray([p.label for p in pairs]) == 1)
    kinds = np.asarray([p.kind for p in pairs])
    result = {"overall": float(right.mean())}
    for kind in dict.fromkeys(p.kind for p in pairs):
        result[kind] = float(right[kinds == kind].mean())
    return result


def evaluate(bundle: Bundle, pairs: Sequence[Pair]) -> dict[str, float]:
    """Accuracy of `bundle` on `pairs` at its threshold, scored by the worker's `OnnxScorer`."""
    scorer = OnnxScorer(bundle, providers=("cpu",))
    scores = np.concatenate(
        [
            scorer.score(
                [p.image for p in pairs[i : i + 100]], [p.caption for p in pairs[i : i + 100]]
            )
            for i in range(0, len(pairs), 100)
        ]
    )
    return accuracy_by_kind(pairs, scores, scorer.threshold)


def _validation_seed(seed: int) -> int:
    return 1_000_000 + seed


def _test_seed(seed: int) -> int:
    return 2_000_000 + seed


if __name__ == "__main__":
    main()
