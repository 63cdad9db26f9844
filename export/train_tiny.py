"""Train a tiny BLIP image-text-matching model on generated shapes and export it as a bundle.

    python -m export.train_tiny --out tests/data/shapes-itm [--seed 0] [--steps N]

No pretrained vision-language weights reach the machines that build
itmguard, so the bundle that tests score with is trained here from scratch,
on pictures from `export.shapes`, and written through the same
`export.blip.export_blip` path (with its parity gate) as any real checkpoint.

ITM on its own stays at chance on this data; BLIP's recipe is what works:
an image-text contrastive (ITC) loss on the [CLS] projections next to the ITM
loss, and ITM negatives that are hard — here both the generated captions
that change one attribute and in-batch negatives mined from the contrastive
similarities. The threshold is the best one on a generated validation split;
accuracy is then measured on the exported ONNX bundle, on a test split drawn
from another seed.

The run is single-threaded with deterministic algorithms, fixed seeds and a
fixed data order, so the same seed, steps, library versions and CPU give the
same model.onnx byte for byte. Figures that vary between runs (wall time)
are printed, never written into the bundle.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoProcessor, BlipForImageTextRetrieval

from export.blip import export_blip
from export.shapes import (
    HARD_KINDS,
    Claim,
    Pair,
    generate_pairs,
    holds,
    negative,
    random_scene,
    render,
    true_claim,
)
from export.tiny import make_tiny_checkpoint
from worker.bundle import Bundle, BundleSpec, load_bundle, write_manifest
from worker.preprocess import ImageSpec, TextEncoder, TextSpec, preprocess_images
from worker.scoring import OnnxScorer

__all__ = [
    "ModelInputs",
    "Recipe",
    "accuracy_by_kind",
    "best_threshold",
    "build_bundle",
    "evaluate",
    "main",
    "train",
]

BUNDLE_NAME = "shapes-itm"
BUNDLE_VERSION = "1"
VALIDATION_PAIRS = 1000
TEST_PAIRS = 2000
_POSITION_SCALE = 3.0
"""Takes sine-cosine position waves (RMS 0.7) to RMS 2.1; patch embeddings start at 3.7."""


@dataclass(frozen=True)
class Recipe:
    """Model size and optimiser settings; what `--steps` and `--seed` leave fixed."""

    image_size: int = 96
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    patch_size: int = 16
    batch: int = 64
    negatives: int = 2
    steps: int = 900
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    temperature: float = 0.07


@dataclass(frozen=True)
class ModelInputs:
    """Preprocessing as bundle.json will record it, so training sees what the worker feeds."""

    image: ImageSpec
    text: TextEncoder


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
    print(f"held-out accuracy of the exported bundle ({held_out['n_pairs']} pairs, seed "
          f"{held_out['seed']}, threshold {spec.threshold}):")
    for kind, accuracy in held_out["accuracy"].items():
        print(f"  {kind:<9} {accuracy:.2%}")
    print(f"total {time.monotonic() - started:.0f}s")


def build_bundle(
    out: Path, *, seed: int = 0, recipe: Recipe = Recipe(), progress: Callable[[str], None] = print
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
        progress(f"validation: threshold {threshold}, accuracy {accuracy:.2%} "
                 f"on {len(validation)} pairs")
        model.save_pretrained(checkpoint)
        spec = export_blip(checkpoint, out, name=BUNDLE_NAME, version=BUNDLE_VERSION,
                           threshold=threshold, progress=progress)
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


def train(
    checkpoint: Path, *, seed: int, recipe: Recipe, progress: Callable[[str], None] = print
) -> tuple[BlipForImageTextRetrieval, ModelInputs]:
    """A tiny BLIP ITM model trained with ITC + ITM on hard negatives.

    Makes torch single-threaded and deterministic for the rest of the process,
    so that the same seed gives the same weights. The random starting
    checkpoint, with the processor the export reads, is written to
    `checkpoint`; the trained weights are returned, not saved.
    """
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    make_tiny_checkpoint(
        checkpoint,
        seed=seed,
        image_size=recipe.image_size,
        hidden_size=recipe.hidden_size,
        num_layers=recipe.num_layers,
        num_heads=recipe.num_heads,
        patch_size=recipe.patch_size,
    )
    model = BlipForImageTextRetrieval.from_pretrained(checkpoint)
    _init_patch_positions(model)
    inputs = _inputs(checkpoint)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: _lr_factor(step, recipe))
    rng = random.Random(f"train-{seed}")
    generator = torch.Generator().manual_seed(seed)
    model.train()
    started = time.monotonic()
    for step in range(1, recipe.steps + 1):
        losses = _step(model, _batch(rng, recipe, inputs), recipe, generator)
        loss = losses["itc"] + losses["itm"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if step % 50 == 0 or step == recipe.steps:
            progress(f"step {step}/{recipe.steps}: itc {losses['itc'].item():.3f} "
                     f"itm {losses['itm'].item():.3f} itm-acc {losses['itm_acc'].item():.2%} "
                     f"{time.monotonic() - started:.0f}s")
    model.eval()  # type: ignore[no-untyped-call]
    return model, inputs


def _torch_scores(
    model: BlipForImageTextRetrieval, inputs: ModelInputs, pairs: Sequence[Pair]
) -> np.ndarray:
    """Match probabilities from the PyTorch model, fed as the worker feeds the bundle."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(pairs), 100):
            chunk = pairs[start:start + 100]
            ids, mask = inputs.text.encode([p.caption for p in chunk])
            pixels = torch.from_numpy(preprocess_images([p.image for p in chunk], inputs.image))
            logits = model(input_ids=torch.from_numpy(ids), pixel_values=pixels,
                           attention_mask=torch.from_numpy(mask), use_itm_head=True).itm_score
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
    scores = np.concatenate([
        scorer.score([p.image for p in pairs[i:i + 100]], [p.caption for p in pairs[i:i + 100]])
        for i in range(0, len(pairs), 100)
    ])
    return accuracy_by_kind(pairs, scores, scorer.threshold)


@dataclass(frozen=True)
class _Batch:
    """One step's data: pictures, their true captions, then rounds of generated negatives."""

    pixels: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    truth: torch.Tensor
    """(pictures, captions): whether caption j is true of picture i."""


def _batch(rng: random.Random, recipe: Recipe, inputs: ModelInputs) -> _Batch:
    """`recipe.batch` scenes; their true captions, then rounds of one-attribute negatives.

    Each picture's negatives change different attributes, drawn from those its
    caption allows, so every kind (position included) is trained on every step.
    """
    scenes = [random_scene(rng) for _ in range(recipe.batch)]
    claims = [true_claim(scene, rng) for scene in scenes]
    kinds = [_hard_kinds(claim, recipe.negatives, rng) for claim in claims]
    wrong = [
        negative(scene, claim, chosen[round_], rng)
        for round_ in range(recipe.negatives)
        for scene, claim, chosen in zip(scenes, claims, kinds, strict=True)
    ]
    captions: list[Claim] = claims + wrong
    ids, mask = inputs.text.encode([c.text for c in captions])
    images = [render(scene, recipe.image_size) for scene in scenes]
    return _Batch(
        pixels=torch.from_numpy(preprocess_images(images, inputs.image)),
        ids=torch.from_numpy(ids),
        mask=torch.from_numpy(mask),
        truth=torch.tensor([[holds(scene, c) for c in captions] for scene in scenes]),
    )


def _hard_kinds(claim: Claim, n: int, rng: random.Random) -> list[str]:
    """`n` different one-attribute kinds for `claim`; position first wherever it names one.

    Position is the slowest attribute to learn and the only one some captions
    lack, so it is never left out where it can be trained.
    """
    others = [kind for kind in HARD_KINDS if kind != "position"]
    if claim.position is None:
        return rng.sample(others, n)
    return ["position", *rng.sample(others, n - 1)]


def _step(
    model: BlipForImageTextRetrieval, batch: _Batch, recipe: Recipe, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """ITC over the batch, then ITM on positives, generated and mined hard negatives."""
    n = batch.pixels.shape[0]
    vision = model.vision_model(pixel_values=batch.pixels).last_hidden_state
    text = model.text_encoder(input_ids=batch.ids, attention_mask=batch.mask).last_hidden_state
    image_feat = F.normalize(model.vision_proj(vision[:, 0]), dim=-1)
    text_feat = F.normalize(model.text_proj(text[:, 0]), dim=-1)
    similarity = image_feat @ text_feat.T / recipe.temperature
    truth = batch.truth.float()
    # Every caption true of a picture is a positive for it, not only its own.
    image_to_text = -(F.log_softmax(similarity, 1) * truth / truth.sum(1, keepdim=True)).sum(1)
    among_true = similarity[:, :n].T
    true_t = truth[:, :n].T
    text_to_image = -(F.log_softmax(among_true, 1) * true_t / true_t.sum(1, keepdim=True)).sum(1)
    itc = (image_to_text.mean() + text_to_image.mean()) / 2

    with torch.no_grad():
        # BLIP's mining: a wrong caption (picture) as likely as ITC finds it similar.
        text_weights = torch.softmax(among_true.T, 1).masked_fill(batch.truth[:, :n], 0)
        image_weights = torch.softmax(among_true, 1).masked_fill(batch.truth[:, :n].T, 0)
        mined_text = torch.multinomial(text_weights, 1, generator=generator).squeeze(1)
        mined_image = torch.multinomial(image_weights, 1, generator=generator).squeeze(1)
    own = torch.arange(n)
    generated = torch.arange(n, batch.ids.shape[0])
    image_index = torch.cat([own, generated % n, own, mined_image])
    text_index = torch.cat([own, generated, mined_text, own])
    labels = (torch.arange(len(image_index)) < n).long()
    joint = model.text_encoder(
        input_ids=batch.ids[text_index],
        attention_mask=batch.mask[text_index],
        encoder_hidden_states=vision[image_index],
        encoder_attention_mask=torch.ones(vision.shape[:2], dtype=torch.long)[image_index],
    ).last_hidden_state
    logits = model.itm_head(joint[:, 0])
    # Positives weigh as much as all the negatives together.
    itm = F.cross_entropy(logits, labels, weight=torch.tensor([1.0, len(labels) / n - 1]))
    return {"itc": itc, "itm": itm, "itm_acc": (logits.argmax(1) == labels).float().mean()}


def _init_patch_positions(model: BlipForImageTextRetrieval) -> None:
    """Start the patches' position embeddings as 2-D sine-cosine waves (as MAE fixes them).

    BLIP's random position embeddings start about forty times smaller than
    the patch contents: position captions stayed at chance after 900 steps,
    and after 1,200 with unscaled waves, while colour, shape and count were
    learned. Waves of the patch contents' order of size make the grid
    coordinates legible from the first step, and positions are learned by
    step 300 like the other attributes.
    """
    embeddings = model.vision_model.embeddings
    grid = int(round((embeddings.num_positions - 1) ** 0.5))
    dim = embeddings.embed_dim
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")
    waves = [torch.outer(axis.reshape(-1), frequencies) for axis in (rows, cols)]
    table = torch.cat([part for wave in waves for part in (wave.sin(), wave.cos())], dim=1)
    with torch.no_grad():
        embeddings.position_embedding[0, 1:] = _POSITION_SCALE * table.float()


def _inputs(checkpoint: Path) -> ModelInputs:
    """The checkpoint's preprocessing, as `export_blip` will record it in bundle.json."""
    processor = AutoProcessor.from_pretrained(checkpoint)  # type: ignore[no-untyped-call]
    images = processor.image_processor
    tokenizer = processor.tokenizer
    tokenizer.backend_tokenizer.save(str(checkpoint / "tokenizer.json"))
    image = ImageSpec(
        height=int(images.size["height"]),
        width=int(images.size["width"]),
        resample=Image.Resampling(int(images.resample)).name.lower(),
        rescale_factor=float(images.rescale_factor),
        mean=tuple(float(v) for v in images.image_mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in images.image_std),  # type: ignore[arg-type]
    )
    text = TextSpec(max_tokens=int(tokenizer.model_max_length), pad_token=tokenizer.pad_token,
                    pad_id=int(tokenizer.pad_token_id))
    return ModelInputs(
        image=image, text=TextEncoder.from_file(checkpoint / "tokenizer.json", text)
    )


def _lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _validation_seed(seed: int) -> int:
    return 1_000_000 + seed


def _test_seed(seed: int) -> int:
    return 2_000_000 + seed


if __name__ == "__main__":
    main()
