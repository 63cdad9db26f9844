"""Decoding untrusted image bytes within limits."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from worker.config import FetchLimits
from worker.errors import ImageDecodeFailed, ImageTooLarge, ImageTooManyPixels
from worker.images import decode_image
from worker.testing import png_header, shape_image


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_common_formats_decode_to_rgb(fmt: str) -> None:
    """PNG, JPEG, WebP and GIF images decode to RGB of their own size."""
    image = decode_image(shape_image("red", "circle", fmt=fmt), FetchLimits())
    assert image.mode == "RGB" and image.height == 96


def test_transparency_is_dropped_as_the_hf_processor_drops_it() -> None:
    """A transparent pixel keeps its colour without alpha, as transformers' convert_to_rgb does."""
    from transformers.image_transforms import convert_to_rgb

    out = io.BytesIO()
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(out, "PNG")
    decoded = decode_image(out.getvalue(), FetchLimits())
    reference = convert_to_rgb(Image.open(io.BytesIO(out.getvalue())))
    assert decoded.getpixel((0, 0)) == reference.getpixel((0, 0)) == (255, 0, 0)


def test_too_many_bytes_is_refused_before_decoding() -> None:
    """Bytes over max_bytes raise ImageTooLarge carrying limit and size."""
    with pytest.raises(ImageTooLarge) as info:
        decode_image(b"\0" * 101, FetchLimits(max_bytes=100))
    assert (info.value.limit, info.value.actual, info.value.code) == (100, 101, "image_too_large")


def test_pixel_bomb_is_refused_from_its_header() -> None:
    """A 50,000 x 50,000 PNG header is refused with ImageTooManyPixels carrying the count."""
    with pytest.raises(ImageTooManyPixels) as info:
        decode_image(png_header(50_000, 50_000), FetchLimits())
    assert info.value.actual == 2_500_000_000


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"plain text, not an image",
        shape_image("red", "circle", fmt="JPEG")[:300],
        png_header(10, 10),
    ],
    ids=["empty", "text", "truncated-jpeg", "png-without-pixels"],
)
def test_broken_images_are_decode_failures(data: bytes) -> None:
    """Empty, non-image, truncated and corrupt bytes raise ImageDecodeFailed."""
    with pytest.raises(ImageDecodeFailed) as info:
        decode_image(data, FetchLimits())
    assert info.value.code == "image_decode_failed"
