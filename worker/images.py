"""Untrusted image bytes in, an RGB picture out, within limits; and the one thumbnail rule.

The pixel limit is checked on the header, before any pixel is decoded, so a
decompression bomb costs a few bytes of parsing, not gigabytes of memory.
"""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from worker.config import FetchLimits
from worker.errors import ImageDecodeFailed, ImageTooLarge, ImageTooManyPixels

__all__ = ["THUMBNAIL_SIZE", "decode_image", "thumbnail_jpeg"]

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")

THUMBNAIL_SIZE = 256
"""Longer side, in pixels, of the thumbnails kept for moderators and shown in reports."""


def decode_image(data: bytes, limits: FetchLimits) -> Image.Image:
    """Decode `data` fully into an RGB image, EXIF orientation applied.

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
            opened.load()
            image = ImageOps.exif_transpose(opened)
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
    return image if image.mode == "RGB" else image.convert("RGB")


def thumbnail_jpeg(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """A JPEG no larger than `size` on its longer side: small enough to keep with a review
    item or inline in a report, large enough for a moderator to judge."""
    small = image.convert("RGB") if image.mode != "RGB" else image.copy()
    small.thumbnail((size, size))
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=80)
    return out.getvalue()
