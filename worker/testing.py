"""Generated inputs and fakes for tests and benchmarks, shipped with the package.

As `structlog.testing` does, the helpers that tests and benchmarks both need
live in the package, so a benchmark never imports the test suite: pictures of
coloured shapes, valid and malformed post events, a scorer and an image
fetcher that need no model and no network.
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from worker.errors import InputError
from worker.verdicts import Record

__all__ = [
    "COLOURS",
    "SHAPES",
    "FakeFetcher",
    "FakeScorer",
    "good_events",
    "png_header",
    "poison_corpus",
    "pooled_events",
    "post_event",
    "record_batches",
    "shape_image",
]

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 60, 220),
    "yellow": (240, 210, 30),
}
SHAPES = ("circle", "square", "triangle")


def shape_image(
    colour: str, shape: str, *, size: int = 96, seed: int = 0, fmt: str = "PNG"
) -> bytes:
    """A picture of one coloured shape on a light background, as encoded bytes."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size + rng.randint(0, 40), size), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    x0, y0 = rng.randint(5, 25), rng.randint(5, 25)
    box = (x0, y0, x0 + size // 2, y0 + size // 2)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon(
            [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill
        )
    out = io.BytesIO()
    image.save(out, format=fmt, quality=90) if fmt == "JPEG" else image.save(out, format=fmt)
    return out.getvalue()


def post_event(post_id: str, caption: str, image: bytes, **extra: Any) -> bytes:
    doc = {
        "post_id": post_id,
        "caption": caption,
        "image": {"data": base64.b64encode(image).decode("ascii")},
        **extra,
    }
    return json.dumps(doc).encode()


def good_events(n: int, *, prefix: str, seed: int = 0) -> list[tuple[str, bytes]]:
    """`n` valid post events with generated JPEG and PNG images; half the captions lie."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        image = shape_image(colour, shape, seed=i, fmt="JPEG" if i % 2 else "PNG")
        if i % 2:
            colour = rng.choice([c for c in COLOURS if c != colour])
        post_id = f"{prefix}-{i:05d}"
        events.append(
            (
                post_id,
                post_event(
                    post_id, f"a {colour} {shape}", image, created_at="2026-11-28T10:00:00+00:00"
                ),
            )
        )
    return events


@dataclass
class FakeScorer:
    """Scores each pair with `rule`; records the batch sizes it was called with."""

    rule: Callable[[Image.Image, str], float]
    model_id: str = "fake@1"
    threshold: float = 0.5
    provider: str = "fake"
    input_size: tuple[int, int] | None = None
    calls: list[int] = field(default_factory=list)

    def fit(self, image: Image.Image) -> Image.Image:
        return image

    def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
        self.calls.append(len(images))
        return np.asarray([self.rule(i, c) for i, c in zip(images, captions, strict=True)])


def pooled_events(n: int, prefix: str, *, seed: int = 0) -> list[tuple[bytes | None, bytes]]:
    """`n` valid `(key, event)` messages over a pool of 12 generated images; captions vary."""
    rng = random.Random(seed)
    pool = [
        shape_image(c, s, seed=i)
        for i, (c, s) in enumerate((c, s) for c in COLOURS for s in SHAPES)
    ]
    messages: list[tuple[bytes | None, bytes]] = []
    for i in range(n):
        post_id = f"{prefix}-{i:05d}"
        caption = rng.choice(["a red circle", "a blue square"])
        messages.append((post_id.encode(), post_event(post_id, caption, rng.choice(pool))))
    return messages


def record_batches(payloads: Sequence[bytes], size: int) -> list[list[Record]]:
    """`payloads` as records of the posts topic, in batches of `size`, offsets counting up."""
    records = [Record(p, topic="posts", offset=i) for i, p in enumerate(payloads)]
    return [records[i : i + size] for i in range(0, len(records), size)]


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` but holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def poison_corpus(rounds: int = 40) -> list[tuple[str | None, str, bytes]]:
    """At least 500 bad events as `(post_id or None, expected reason, payload)`."""
    rng = random.Random(11)
    jpeg = shape_image("red", "circle", fmt="JPEG")
    png = shape_image("blue", "square")
    bomb = base64.b64encode(png_header(50_000, 50_000)).decode()

    def event(post_id: str, **fields: object) -> bytes:
        doc: dict[str, object] = {
            "post_id": post_id,
            "caption": "a red circle",
            "image": {"data": base64.b64encode(png).decode()},
        }
        doc.update(fields)
        return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()

    def data(raw: bytes) -> dict[str, str]:
        return {"data": base64.b64encode(raw).decode()}

    cases: list[tuple[str | None, str, bytes]] = []
    for i in range(rounds):
        p = f"poison-{i:03d}"
        cases += [
            (None, "invalid_json", b'{"post_id": "' + p.encode() + b'", "caption": '),
            (None, "invalid_json", bytes(rng.randrange(256) for _ in range(64)) + b"\xff"),
            (
                f"{p}-type",
                "invalid_event",
                event(f"{p}-type", caption=rng.choice([7, [], {}, True])),
            ),
            (f"{p}-miss", "invalid_event", event(f"{p}-miss", caption=None)),
            (f"{p}-extra", "invalid_event", event(f"{p}-extra", surprise=1)),
            (f"{p}-empty", "invalid_event", event(f"{p}-empty", caption="")),
            (
                f"{p}-long",
                "invalid_event",
                event(f"{p}-long", caption="x" * (1_000_000 if i < 3 else 6000)),
            ),
            (f"{p}-nul", "invalid_event", event(f"{p}-nul", caption="nul \x00 here")),
            (
                f"{p}-trunc",
                "image_decode_failed",
                event(f"{p}-trunc", image=data(jpeg[: rng.randint(10, len(jpeg) - 10)])),
            ),
            (
                f"{p}-corrupt",
                "image_decode_failed",
                event(f"{p}-corrupt", image=data(png[:40] + bytes(200) + png[240:])),
            ),
            (f"{p}-zero", "invalid_event", event(f"{p}-zero", image={"data": ""})),
            (f"{p}-bomb", "image_too_many_pixels", event(f"{p}-bomb", image={"data": bomb})),
            (
                f"{p}-text",
                "image_decode_failed",
                event(f"{p}-text", image=data(b"GIF89a? no, text")),
            ),
        ]
    for i in range(3):
        cases.append(
            (
                f"poison-huge-{i}",
                "image_too_large",
                event(f"poison-huge-{i}", image=data(bytes(1_200_000))),
            )
        )
    return cases


@dataclass
class FakeFetcher:
    """Answers image URLs from `answers` (bytes or the `InputError` to fail with); records
    the URLs asked for. A URL it does not know fails as `ImageFetchFailed`."""

    answers: Mapping[str, bytes | InputError] = field(default_factory=dict)
    asked: list[list[str]] = field(default_factory=list)
    closed: bool = False

    async def fetch_all(self, urls: Iterable[str]) -> dict[str, bytes | InputError]:
        from worker.errors import ImageFetchFailed

        wanted = list(urls)
        self.asked.append(wanted)
        return {
            u: self.answers.get(u, ImageFetchFailed("unknown to the fake fetcher")) for u in wanted
        }

    async def close(self) -> None:
        self.closed = True
