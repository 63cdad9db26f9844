"""Messages on the topics: parse post events, build verdict and dead-letter messages.

The JSON Schema files in `schemas/` are the contract; this module only loads
them and maps their failures onto `InputError` codes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib.resources import files
from typing import Any

import jsonschema

from worker.errors import ImageDecodeFailed, InvalidEvent, InvalidJson

__all__ = [
    "DLQ_MAX_PAYLOAD",
    "ImageSource",
    "PostEvent",
    "dead_letter_message",
    "load_schema",
    "parse_post_event",
    "peek_post_id",
    "validator",
]

DLQ_MAX_PAYLOAD = 512 * 1024
"""Original payload bytes kept in a dead letter; larger ones are cut (Kafka's default
message limit is 1 MB and base64 adds a third)."""


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema `name` (`post-event.v1`, `verdict.v1`, `dead-letter.v1`) as a dict."""
    text = files("schemas").joinpath(f"{name}.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    """A draft 2020-12 validator for schema `name`, formats checked."""
    cls = jsonschema.Draft202012Validator
    return cls(load_schema(name), format_checker=cls.FORMAT_CHECKER)


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
    for where, text in (("post_id", doc["post_id"]), ("caption", doc["caption"]),
                        ("author_id", doc.get("author_id", "")), ("image/url", image.get("url", ""))):
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
    )


def dead_letter_message(
    *,
    payload: bytes,
    post_id: str | None,
    reason: str,
    detail: str,
    model_id: str,
    topic: str,
    partition: int | None,
    offset: int | None,
    failed_at: datetime,
) -> dict[str, Any]:
    """The dead-letter message for one failed post, its payload cut to `DLQ_MAX_PAYLOAD`."""
    kept = payload[:DLQ_MAX_PAYLOAD]
    return {
        "schema_version": 1,
        "post_id": post_id,
        "reason": reason,
        "detail": detail[:1000],
        "model_id": model_id,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "failed_at": failed_at.isoformat(),
        "payload_b64": base64.b64encode(kept).decode("ascii"),
        "payload_size": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_truncated": len(kept) < len(payload),
    }
