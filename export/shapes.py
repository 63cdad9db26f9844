"""Generated pictures of coloured shapes with true captions and one-attribute hard negatives.

No real image-text data can be downloaded where itmguard is built, so the
tiny model that makes tests' scores mean something learns from this
generator. A scene is a group of one to three identical shapes of one colour,
laid out on a 3 x 3 grid, either lined up in one region (left, right, top,
bottom, centre) or scattered. Its caption is a `Claim`; a hard negative is
the true claim with exactly one attribute changed (colour, shape, count or
position), which is what a matcher must get right to be worth anything.
Everything is a pure function of a seed, so training and its tests are
reproducible bit for bit.
"""

from __future__ import annotations

import base64
import io
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "COUNTS",
    "HARD_KINDS",
    "KINDS",
    "POSITIONS",
    "SHAPES",
    "TEMPLATES",
    "Claim",
    "Pair",
    "Scene",
    "generate_pairs",
    "holds",
    "labelled_events",
    "negative",
    "negative_kinds",
    "random_scene",
    "render",
    "true_claim",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 60),
    "blue": (40, 70, 215),
    "yellow": (235, 200, 25),
    "purple": (140, 45, 175),
    "orange": (240, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
COUNTS = (1, 2, 3)
POSITIONS = ("left", "right", "top", "bottom", "centre")

HARD_KINDS = ("colour", "shape", "count", "position")
"""Negatives that change exactly one attribute of the true caption."""
KINDS = ("match", *HARD_KINDS, "random")
"""Every pair's `kind`: the true caption, a hard negative, or another scene's caption."""

TEMPLATES = (
    "{np}{pp}",
    "a photo of {np}{pp}",
    "a picture of {np}{pp}",
    "a drawing of {np}{pp}",
    "there {be} {np}{pp}",
)
"""Caption wordings; `{np}` is "a red circle" or "two red circles", `{pp}` the position phrase."""

_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}
_COUNT_WORDS = {2: "two", 3: "three"}
_POSITION_PHRASES = {
    "left": " on the left",
    "right": " on the right",
    "top": " at the top",
    "bottom": " at the bottom",
    "centre": " in the centre",
}
# Grid cells (row, column) that each position names. A lone shape with a
# position sits in the one cell of the cross that has only that position, so
# exactly one position is true of it; a group lines up in a row or column.
_REGIONS: dict[str, tuple[tuple[int, int], ...]] = {
    "left": ((0, 0), (1, 0), (2, 0)),
    "right": ((0, 2), (1, 2), (2, 2)),
    "top": ((0, 0), (0, 1), (0, 2)),
    "bottom": ((2, 0), (2, 1), (2, 2)),
    "centre": ((1, 1),),
}
_CROSS = {"left": (1, 0), "right": (1, 2), "top": (0, 1), "bottom": (2, 1), "centre": (1, 1)}
_CELLS = tuple((row, col) for row in range(3) for col in range(3))
_TEXTURES = ("plain", "noise", "stripes")
# A five-pointed star around the origin, radius 1, one point up.
_STAR = tuple(
    (radius * math.cos(angle), radius * math.sin(angle))
    for i in range(10)
    for angle, radius in [(i * math.pi / 5 - math.pi / 2, 1.0 if i % 2 == 0 else 0.45)]
)


@dataclass(frozen=True)
class Scene:
    """What a picture shows and where: enough to render it and to judge any claim about it.

    `position` is the region the group was lined up in, or None for a
    scattered group; `cells` are the (row, column) grid cells of its shapes.
    """

    colour: str
    shape: str
    count: int
    position: str | None
    cells: tuple[tuple[int, int], ...]
    sizes: tuple[float, ...]
    offsets: tuple[tuple[float, float], ...]
    fills: tuple[tuple[int, int, int], ...]
    background: tuple[int, int, int]
    texture: str
    texture_seed: int


@dataclass(frozen=True)
class Claim:
    """A caption as attributes; `text` is its wording in `TEMPLATES[template]`."""

    colour: str
    shape: str
    count: int
    position: str | None
    template: int

    @property
    def text(self) -> str:
        """The caption, using only words in `export.tiny.WORDS`."""
        noun = self.shape if self.count == 1 else _PLURALS[self.shape]
        phrase = "" if self.position is None else _POSITION_PHRASES[self.position]
        article = "an" if self.colour[0] in "aeiou" else "a"
        amount = article if self.count == 1 else _COUNT_WORDS[self.count]
        return TEMPLATES[self.template].format(
            np=f"{amount} {self.colour} {noun}",
            pp=phrase,
            be="is" if self.count == 1 else "are",
        )


@dataclass(frozen=True)
class Pair:
    """One labelled example: label 1 when `caption` is true of `image`."""

    image: Image.Image
    caption: str
    label: int
    kind: str
    scene: Scene
    claim: Claim


def holds(scene: Scene, claim: Claim) -> bool:
    """Whether `claim` is true of `scene`: same colour, shape and exact count, all in its region."""
    if (claim.colour, claim.shape, claim.count) != (scene.colour, scene.shape, scene.count):
        return False
    return claim.position is None or all(cell in _REGIONS[claim.position] for cell in scene.cells)


def random_scene(rng: random.Random) -> Scene:
    """A scene with every attribute and the layout drawn from `rng`."""
    count = rng.choice(COUNTS)
    position: str | None = None
    if rng.random() < 0.6:
        position = rng.choice(POSITIONS if count == 1 else POSITIONS[:4])
    if position is None:
        cells = tuple(rng.sample(_CELLS, count))
    elif count == 1:
        cells = (_CROSS[position],)
    else:
        cells = tuple(rng.sample(_REGIONS[position], count))
    base = COLOURS[colour := rng.choice(list(COLOURS))]
    return Scene(
        colour=colour,
        shape=rng.choice(SHAPES),
        count=count,
        position=position,
        cells=cells,
        sizes=tuple(rng.uniform(0.55, 0.9) for _ in cells),
        offsets=tuple((rng.uniform(-1, 1), rng.uniform(-1, 1)) for _ in cells),
        fills=tuple(_jitter(base, rng) for _ in cells),
        background=(rng.randint(205, 250), rng.randint(205, 250), rng.randint(205, 250)),
        texture=rng.choice(_TEXTURES),
        texture_seed=rng.getrandbits(32),
    )


def true_claim(scene: Scene, rng: random.Random) -> Claim:
    """A true caption of `scene`; a lined-up group's position is named three times in four."""
    position = scene.position if scene.position is not None and rng.random() < 0.75 else None
    return Claim(scene.colour, scene.shape, scene.count, position, rng.randrange(len(TEMPLATES)))


def negative(scene: Scene, claim: Claim, kind: str, rng: random.Random) -> Claim:
    """A false caption of `scene`: `claim` with one attribute changed, or another scene's.

    Raises:
        ValueError: `kind` is "position" and `claim` names no position, or `kind` is unknown.
    """
    if kind == "colour":
        return replace(claim, colour=rng.choice([c for c in COLOURS if c != claim.colour]))
    if kind == "shape":
        return replace(claim, shape=rng.choice([s for s in SHAPES if s != claim.shape]))
    if kind == "count":
        return replace(claim, count=rng.choice([n for n in COUNTS if n != claim.count]))
    if kind == "position":
        if claim.position is None:
            raise ValueError("a position negative needs a claim that names a position")
        return replace(claim, position=rng.choice([p for p in POSITIONS if p != claim.position]))
    if kind == "random":
        while True:
            other = random_scene(rng)
            candidate = true_claim(other, rng)
            if not holds(scene, candidate):
                return candidate
    raise ValueError(f"unknown negative kind {kind!r}; expected one of {KINDS[1:]}")


def negative_kinds(claim: Claim) -> tuple[str, ...]:
    """The negative kinds `claim` allows: a position can only be changed where one is named."""
    kinds = (*HARD_KINDS, "random")
    return tuple(k for k in kinds if k != "position" or claim.position is not None)


def render(scene: Scene, image_size: int) -> Image.Image:
    """`scene` as an RGB picture `image_size` pixels square."""
    image = _background(scene, image_size)
    draw = ImageDraw.Draw(image)
    cell = image_size / 3
    for (row, col), size, (dx, dy), fill in zip(
        scene.cells, scene.sizes, scene.offsets, scene.fills, strict=True
    ):
        half = size * cell / 2
        slack = cell / 2 - half
        cx = (col + 0.5) * cell + dx * slack
        cy = (row + 0.5) * cell + dy * slack
        _draw_shape(draw, scene.shape, cx, cy, half, fill)
    return image


def generate_pairs(n: int, *, seed: int, image_size: int = 96) -> list[Pair]:
    """`n` labelled pairs, half matches and half negatives, the same for the same seed.

    Scenes come two pairs at a time: the true caption, then a negative of the
    kind, among those the caption allows, used least so far, so every kind of
    negative is about equally common.
    """
    rng = random.Random(seed)
    used = dict.fromkeys(KINDS[1:], 0)
    pairs: list[Pair] = []
    while len(pairs) < n:
        scene = random_scene(rng)
        claim = true_claim(scene, rng)
        image = render(scene, image_size)
        pairs.append(Pair(image, claim.text, 1, "match", scene, claim))
        if len(pairs) < n:
            allowed = negative_kinds(claim)
            fewest = min(used[k] for k in allowed)
            kind = rng.choice([k for k in allowed if used[k] == fewest])
            used[kind] += 1
            wrong = negative(scene, claim, kind, rng)
            pairs.append(Pair(image, wrong.text, 0, kind, scene, wrong))
    return pairs


def labelled_events(pairs: Iterable[Pair], *, prefix: str = "shapes") -> Iterator[dict[str, Any]]:
    """Post events with a `label`, as `itmguard calibrate --labelled` reads them (one per line).

    The image travels inline as base64 PNG; `metadata.kind` says which kind of
    pair each event is, so a calibration report can break its figures down.
    """
    for i, pair in enumerate(pairs):
        png = io.BytesIO()
        pair.image.save(png, format="PNG")
        yield {
            "post_id": f"{prefix}-{i:06d}",
            "caption": pair.caption,
            "image": {"data": base64.b64encode(png.getvalue()).decode("ascii")},
            "metadata": {"kind": pair.kind},
            "label": pair.label,
        }


def _jitter(colour: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    """`colour` moved up to 20 levels per channel, so no two reds are quite the same."""
    red, green, blue = (max(0, min(255, c + rng.randint(-20, 20))) for c in colour)
    return red, green, blue


def _background(scene: Scene, size: int) -> Image.Image:
    """A pale plain, speckled or striped background, light enough that every colour shows."""
    base = np.broadcast_to(np.asarray(scene.background, dtype=np.float64), (size, size, 3))
    if scene.texture == "noise":
        noise = np.random.default_rng(scene.texture_seed).normal(0, 6, (size, size, 1))
        base = base + noise
    elif scene.texture == "stripes":
        rng = np.random.default_rng(scene.texture_seed)
        period = rng.integers(4, 12)
        axis = np.arange(size)[:, None] if rng.random() < 0.5 else np.arange(size)[None, :]
        base = base - 14.0 * ((axis // period) % 2)[..., None]
    return Image.fromarray(np.clip(np.rint(base), 0, 255).astype(np.uint8), "RGB")


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    fill: tuple[int, int, int],
) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        side = r * 0.88  # a square looks bigger than the circle of the same width
        draw.rectangle((cx - side, cy - side, cx + side, cy + side), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    else:
        draw.polygon([(cx + r * x, cy + r * y) for x, y in _STAR], fill=fill)
