"""How the tiny BLIP image-text-matching model learns on generated shapes.

ITM on its own stays at chance on this data; BLIP's recipe is what works: an
image-text contrastive (ITC) loss on the [CLS] projections next to the ITM
loss, and ITM negatives that are hard — here both the generated captions that
change one attribute and in-batch negatives mined from the contrastive
similarities. Kept apart from `export.train_tiny`, which runs this, picks the
threshold, exports the bundle and measures it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoProcessor, BlipForImageTextRetrieval

from export.shapes import HARD_KINDS, Claim, holds, negative, random_scene, render, true_claim
from export.tiny import make_tiny_checkpoint
from worker.preprocess import ImageSpec, TextEncoder, TextSpec, preprocess_images

__all__ = ["ModelInputs", "Recipe", "train"]

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
            progress(
                f"step {step}/{recipe.steps}: itc {losses['itc'].item():.3f} "
                f"itm {losses['itm'].item():.3f} itm-acc {losses['itm_acc'].item():.2%} "
                f"{time.monotonic() - started:.0f}s"
            )
    model.eval()  # type: ignore[no-untyped-call]
    return model, inputs


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
    grid = round((embeddings.num_positions - 1) ** 0.5)
    dim = embeddings.embed_dim
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )
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
    text = TextSpec(
        max_tokens=int(tokenizer.model_max_length),
        pad_token=tokenizer.pad_token,
        pad_id=int(tokenizer.pad_token_id),
    )
    return ModelInputs(image=image, text=TextEncoder.from_file(checkpoint / "tokenizer.json", text))


def _lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
