"""Every message itmguard sends, built and serialised here, and the schemas they follow.

The JSON Schema files in `schemas/` are the contract with the pipelines that
consume the topics; tests validate real messages against them. A flag on the
flags topic and a verdict line from `itmguard score` are the same document.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from functools import cache
from importlib.resources import files
from typing import Any

import jsonschema

from worker.explain import Explanation
from worker.verdicts import Verdict, flag_id

__all__ = [
    "DLQ_MAX_PAYLOAD",
    "dead_letter_message",
    "encode",
    "load_schema",
    "validator",
    "verdict_message",
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


def encode(message: dict[str, Any]) -> bytes:
    """A message as the bytes sent: compact UTF-8 JSON."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def verdict_message(verdict: Verdict, explanation: Explanation | None = None) -> dict[str, Any]:
    """The JSON document of `schemas/verdict.v1.json`: a flag, or a line of `itmguard score`.

    `explanation` (a mismatch's, `worker.explain`) becomes the optional `explanation` field;
    without one the document has no such key, as before it existed.
    """
    message: dict[str, Any] = {
        "schema_version": 1,
        "flag_id": flag_id(verdict.post_id, verdict.model_id),
        "post_id": verdict.post_id,
        "model_id": verdict.model_id,
        "score": verdict.score,
        "threshold": verdict.threshold,
        "verdict": verdict.verdict,
        "error_code": verdict.error_code,
        "scored_at": verdict.scored_at.isoformat(),
        "event_time": verdict.event_time.isoformat() if verdict.event_time else None,
    }
    if explanation is not None:
        message["explanation"] = explanation.as_json()
    return message


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
    """The dead-letter message for one failed record, its payload cut to `DLQ_MAX_PAYLOAD`."""
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
