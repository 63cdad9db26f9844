"""Decoding untrusted image bytes within limits."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from worker.config import FetchLimits
from worker.errors import ImageDecodeFailed, ImageTooLarge, ImageTooManyPixels
from worker.images import THUMBNAIL_SIZE, decode_image, decode_size
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
@pytest.mark.parametrize("min_size", [None, (8, 8)], ids=["full", "reduced"])
def test_broken_images_are_decode_failures(data: bytes, min_size: tuple[int, int] | None) -> None:
    """Empty, non-image, truncated and corrupt bytes raise ImageDecodeFailed, whether the
    picture is decoded at full size or reduced."""
    with pytest.raises(ImageDecodeFailed) as info:
        decode_image(data, FetchLimits(), min_size=min_size)
    assert info.value.code == "image_decode_failed"


def _photo_jpeg(size: tuple[int, int], orientation: int | None = None) -> bytes:
    """scikit-image's astronaut as a JPEG of `size`, with an EXIF Orientation if given."""
    from skimage import data as photos

    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    out = io.BytesIO()
    photo = Image.fromarray(photos.astronaut()).resize(size, Image.Resampling.BICUBIC)
    photo.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def test_a_4mp_jpeg_is_decoded_at_reduced_scale() -> None:
    """A 2448 x 1632 JPEG asked for 448 x 448 comes back at 1/2 DCT scale, never full size."""
    image = decode_image(_photo_jpeg((2448, 1632)), FetchLimits(), min_size=(448, 448))
    assert image.size == (1224, 816)


def test_draft_mode_is_applied_before_the_pixels_are_decoded() -> None:
    """The JPEG decoder itself is asked for a smaller scale: the image is drafted, not shrunk."""
    data = _photo_jpeg((2448, 1632))
    opened = Image.open(io.BytesIO(data))
    opened.draft("RGB", (448, 448))
    assert decode_image(data, FetchLimits(), min_size=(448, 448)).size == opened.size


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [(1, (1224, 816)), (3, (1224, 816)), (6, (1632, 2448)), (8, (1632, 2448))],
)
def test_reduced_decode_honours_exif_orientation(
    orientation: int, expected: tuple[int, int]
) -> None:
    """min_size is upright: a photo turned 90 degrees by EXIF keeps its upright width of
    1632 >= 1000 (half scale would give 816), while an unturned one may halve."""
    data = _photo_jpeg((2448, 1632), orientation)
    image = decode_image(data, FetchLimits(), min_size=(1000, 300))
    assert image.size == expected


def test_reduce_shrinks_other_formats_by_a_whole_factor() -> None:
    """A PNG with room to spare is box-reduced by the largest factor that keeps min_size."""
    out = io.BytesIO()
    Image.new("RGB", (1000, 700), (9, 99, 199)).save(out, "PNG")
    image = decode_image(out.getvalue(), FetchLimits(), min_size=(200, 200))
    assert (image.size, image.mode, image.getpixel((0, 0))) == ((334, 234), "RGB", (9, 99, 199))


def test_a_picture_smaller_than_min_size_keeps_its_size() -> None:
    """Nothing is ever enlarged: a 96-pixel picture asked for 768 comes back as it was."""
    data = shape_image("red", "circle", fmt="JPEG")
    assert decode_image(data, FetchLimits(), min_size=(768, 768)).size == (
        decode_image(data, FetchLimits()).size
    )


def test_decode_size_keeps_twice_the_model_input_and_the_thumbnail() -> None:
    """The size asked for is twice the model's side, and never under THUMBNAIL_SIZE."""
    assert decode_size((384, 224)) == (768, 448)
    assert decode_size((32, 32)) == (THUMBNAIL_SIZE, THUMBNAIL_SIZE)


def test_limits_hold_when_reduced() -> None:
    """The byte limit and the header's pixel limit refuse before any reduced decode."""
    with pytest.raises(ImageTooManyPixels):
        decode_image(png_header(50_000, 50_000), FetchLimits(), min_size=(8, 8))
    data = _photo_jpeg((2448, 1632))
    with pytest.raises(ImageTooManyPixels) as info:
        decode_image(data, FetchLimits(max_pixels=1_000_000), min_size=(8, 8))
    assert info.value.actual == 2448 * 1632
    with pytest.raises(ImageTooLarge):
        decode_image(data, FetchLimits(max_bytes=len(data) - 1), min_size=(8, 8))
