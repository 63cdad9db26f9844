"""Post events in: parse and validate the messages the worker consumes.

The post-event schema (`schemas/post-event.v1.json`) is the contract; this
module maps its failures onto `InputError` codes, which become the error
verdict and the dead letter's reason.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jsonschema

from worker.errors import ImageDecodeFailed, InvalidEvent, InvalidJson
from worker.messages import validator

__all__ = ["ImageSource", "PostEvent", "parse_post_event", "peek_post_id"]


@dataclass(frozen=True)
class ImageSource:
    """Where a post's image is: inline bytes or a URL (never both)."""

    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class PostEvent:
    """A post event that passed the schema."""

    post_id: str
    caption: str
    image: ImageSource
    created_at: datetime | None
    author_id: str | None = None
    """Who posted it, when the platform says: the review page counts their recent flags."""


def _decode_json(payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidJson(f"payload is not UTF-8 JSON: {type(exc).__name__}") from None


def peek_post_id(payload: bytes) -> str | None:
    """The post_id of a payload that may be broken, when it has a usable one."""
    try:
        doc = _decode_json(payload)
    except InvalidJson:
        return None
    post_id = doc.get("post_id") if isinstance(doc, dict) else None
    if isinstance(post_id, str) and 0 < len(post_id) <= 256 and _storable(post_id):
        return post_id
    return None


def _storable(text: str) -> bool:
    """Postgres text holds no NUL, and UTF-8 holds no unpaired surrogate (JSON allows both)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_post_event(payload: bytes) -> PostEvent:
    """Parse and validate one message from the posts topic.

    Raises:
        InvalidJson: not UTF-8 JSON.
        InvalidEvent: breaks the post-event schema; the message names the field, not its value.
        ImageDecodeFailed: `image.data` is not base64.
    """
    doc = _decode_json(payload)
    error = jsonschema.exceptions.best_match(validator("post-event.v1").iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise InvalidEvent(f"{where}: fails '{error.validator}' of the post-event schema")
    image = doc["image"]
    for where, text in (
        ("post_id", doc["post_id"]),
        ("caption", doc["caption"]),
        ("author_id", doc.get("author_id", "")),
        ("image/url", image.get("url", "")),
    ):
        if not _storable(text):
            raise InvalidEvent(f"{where}: holds a NUL character or an unpaired surrogate")
    if "data" in image:
        try:
            source = ImageSource(data=base64.b64decode(image["data"], validate=True))
        except (binascii.Error, ValueError):
            raise ImageDecodeFailed("image.data is not valid base64") from None
    else:
        source = ImageSource(url=image["url"])
    created = doc.get("created_at")
    return PostEvent(
        post_id=doc["post_id"],
        caption=doc["caption"],
        image=source,
        created_at=datetime.fromisoformat(created) if created else None,
        author_id=doc.get("author_id") or None,
    )
