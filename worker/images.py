"""Untrusted image bytes in, an RGB picture out, within limits; and the one thumbnail rule.

The pixel limit is checked on the header, before any pixel is decoded, so a
decompression bomb costs a few bytes of parsing, not gigabytes of memory. A caller
that knows how many pixels it needs passes `min_size`: a JPEG is then decoded at a
reduced DCT scale (Pillow's draft mode) and any picture is box-reduced by a whole
factor, so a 4 MP photo is never decoded, nor resized, at full size.
"""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from worker.config import FetchLimits
from worker.errors import ImageDecodeFailed, ImageTooLarge, ImageTooManyPixels

__all__ = ["REDUCING_GAP", "THUMBNAIL_SIZE", "decode_image", "decode_size", "thumbnail_jpeg"]

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")
_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})
"""EXIF orientations that turn the picture by 90 degrees, so width and height trade places."""

THUMBNAIL_SIZE = 256
"""Longer side, in pixels, of the thumbnails kept for moderators and shown in reports."""

REDUCING_GAP = 2
"""How many times the model's input size a reduced decode keeps, as Pillow's own
`thumbnail` does: the final resize then still averages over several source pixels, and
the model input stays within 0.15 (normalised units) of a full decode's, not 0.45."""


def decode_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """The `min_size` to decode at for a model whose input is `input_size` (width, height).

    Preprocessing resizes to exactly width x height (no crop), so each side is bounded on
    its own: REDUCING_GAP times the model's side, and never under THUMBNAIL_SIZE so the
    review thumbnail made from the same picture is as large as from the full one.
    """
    width, height = input_size
    return (
        max(REDUCING_GAP * width, THUMBNAIL_SIZE),
        max(REDUCING_GAP * height, THUMBNAIL_SIZE),
    )


def decode_image(
    data: bytes, limits: FetchLimits, *, min_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode `data` into an RGB image, EXIF orientation applied.

    Without `min_size` the picture is decoded at full size. With `min_size=(width,
    height)` it may come back smaller, by a whole factor, but never narrower than
    `width` nor lower than `height` (upright, after the EXIF turn) unless the picture
    itself is; a JPEG is then decoded at 1/2, 1/4 or 1/8 scale where that suffices.

    Transparency is dropped with a plain RGB conversion, as the Hugging Face image
    processors (transformers 5) and BLIP's own training code do, so the worker
    sees the picture the model was trained on.

    Raises:
        ImageTooLarge: more bytes than `limits.max_bytes`.
        ImageTooManyPixels: the header declares more than `limits.max_pixels`.
        ImageDecodeFailed: not an image, truncated or corrupt.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(limit=limits.max_bytes, actual=len(data))
    if not data:
        raise ImageDecodeFailed("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            pixels = opened.width * opened.height
            if pixels > limits.max_pixels:
                raise ImageTooManyPixels(limit=limits.max_pixels, actual=pixels)
            if min_size is not None:
                _draft(opened, min_size)
            opened.load()
            # in place: an upright picture (most are) is then not copied at all
            ImageOps.exif_transpose(opened, in_place=True)
            image = opened
    except ImageTooManyPixels:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses canvases over twice its own limit inside open(), before our check.
        found = _BOMB_SIZE.search(str(exc))
        actual = int(found.group(1)) if found else limits.max_pixels + 1
        raise ImageTooManyPixels(limit=limits.max_pixels, actual=actual) from None
    except UnidentifiedImageError:
        raise ImageDecodeFailed("bytes are not a known image format") from None
    except (*_DECODE_ERRORS, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeFailed(f"image is corrupt or truncated ({type(exc).__name__})") from None
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return rgb if min_size is None else _reduce(rgb, min_size)


def _draft(opened: Image.Image, min_size: tuple[int, int]) -> None:
    """Ask a JPEG decoder for the smallest DCT scale that keeps `min_size` (upright)."""
    if opened.format != "JPEG":
        return
    width, height = min_size
    if opened.getexif().get(_ORIENTATION) in _SWAPS_AXES:
        width, height = height, width
    opened.draft("RGB", (max(width, 1), max(height, 1)))


def _reduce(image: Image.Image, min_size: tuple[int, int]) -> Image.Image:
    """Box-reduce `image` by the largest whole factor that keeps it at least `min_size`."""
    factor = min(image.width // max(min_size[0], 1), image.height // max(min_size[1], 1))
    return image.reduce(factor) if factor > 1 else image


def thumbnail_jpeg(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """A JPEG no larger than `size` on its longer side: small enough to keep with a review
    item or inline in a report, large enough for a moderator to judge."""
    small = image.convert("RGB") if image.mode != "RGB" else image.copy()
    small.thumbnail((size, size))
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=80)
    return out.getvalue()
