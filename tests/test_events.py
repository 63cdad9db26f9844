"""Post events in, verdict and dead-letter messages out, all against the schemas."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from worker.errors import ImageDecodeFailed, InvalidEvent, InvalidJson
from worker.events import parse_post_event, peek_post_id
from worker.messages import dead_letter_message, validator, verdict_message
from worker.verdicts import Verdict, decide, flag_id

IMAGE = base64.b64encode(b"\x89PNG fake").decode()


def _event(**fields: object) -> bytes:
    doc = {"post_id": "p1", "caption": "a cat", "image": {"data": IMAGE}} | fields
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def test_valid_event_parses() -> None:
    """A valid event gives its fields, the image bytes decoded, the time parsed and the
    author when it names one."""
    event = parse_post_event(_event(created_at="2026-11-28T10:00:00Z", author_id="u", metadata={}))
    assert (event.post_id, event.caption, event.image.data) == ("p1", "a cat", b"\x89PNG fake")
    assert event.created_at == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert event.author_id == "u"
    assert parse_post_event(_event()).author_id is None


def test_url_event_parses() -> None:
    """An image given by URL keeps the URL and no bytes."""
    event = parse_post_event(_event(image={"url": "https://img.example/x.jpg"}))
    assert (event.image.url, event.image.data) == ("https://img.example/x.jpg", None)


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe not utf8", b"{not json", b""],
)
def test_broken_payloads_are_invalid_json(payload: bytes) -> None:
    """Bytes that are not UTF-8 JSON raise InvalidJson with the code invalid_json."""
    with pytest.raises(InvalidJson) as info:
        parse_post_event(payload)
    assert info.value.code == "invalid_json"


@pytest.mark.parametrize(
    "fields",
    [
        {"caption": None},
        {"post_id": None},
        {"image": None},
        {"caption": ""},
        {"caption": 42},
        {"caption": "x" * 5001},
        {"image": {"data": IMAGE, "url": "https://a/b"}},
        {"image": {}},
        {"extra": 1},
        {"created_at": "yesterday"},
        {"schema_version": 2},
    ],
)
def test_schema_breaks_are_invalid_event(fields: dict[str, object]) -> None:
    """Missing, wrong-typed, extra and out-of-range fields raise InvalidEvent."""
    with pytest.raises(InvalidEvent) as info:
        parse_post_event(_event(**fields))
    assert info.value.code == "invalid_event"


def test_invalid_event_message_names_the_field_not_the_content() -> None:
    """The error names where the event broke the schema, never the caption itself."""
    with pytest.raises(InvalidEvent) as info:
        parse_post_event(_event(caption="secret words " * 500))
    assert "caption" in str(info.value) and "secret" not in str(info.value)


def test_bad_base64_is_a_decode_failure() -> None:
    """image.data that is not base64 is image_decode_failed."""
    with pytest.raises(ImageDecodeFailed):
        parse_post_event(_event(image={"data": "not base64 !!"}))


def test_peek_post_id_recovers_ids_from_broken_events() -> None:
    """A post_id is found in schema-breaking JSON, and None in non-JSON or non-string ids."""
    assert peek_post_id(b'{"post_id": "p9", "caption": 3}') == "p9"
    assert peek_post_id(b'{"post_id": 9}') is None
    assert peek_post_id(b"[1, 2]") is None
    assert peek_post_id(b"\x00\x01") is None


def test_dead_letter_is_valid_and_cuts_huge_payloads() -> None:
    """Dead letters validate; a payload over 512 KiB is cut but described in full."""
    payload = b"x" * (600 * 1024)
    letter = dead_letter_message(
        payload=payload,
        post_id=None,
        reason="invalid_json",
        detail="d",
        model_id="m@1",
        topic="posts",
        partition=0,
        offset=7,
        failed_at=datetime.now(UTC),
    )
    validator("dead-letter.v1").validate(letter)
    assert letter["payload_truncated"] is True
    assert letter["payload_size"] == len(payload)
    assert len(base64.b64decode(letter["payload_b64"])) == 512 * 1024


def test_verdict_messages_validate_and_flag_ids_are_stable() -> None:
    """Match, mismatch and error verdicts validate; flag_id depends on post and model only."""
    now = datetime.now(UTC)
    for score, kind, code in [(0.9, "match", None), (0.1, "mismatch", None), (None, "error", "x")]:
        message = verdict_message(Verdict("p1", "m@1", score, 0.5, kind, code, now, None))
        validator("verdict.v1").validate(message)
        assert message["flag_id"] == flag_id("p1", "m@1")
    assert flag_id("p1", "m@1") != flag_id("p1", "m@2")


def test_decide_splits_at_the_threshold() -> None:
    """Below the threshold is a mismatch; at or above it, a match."""
    assert decide(0.49, 0.5) == "mismatch"
    assert decide(0.5, 0.5) == "match"
    with pytest.raises(ValueError):
        decide(float("nan"), 0.5)


@pytest.mark.parametrize(
    "fields",
    [
        {"post_id": "a\x00b"},
        {"caption": "nul \x00 inside"},
        {"caption": "lone \ud800 surrogate"},
        {"author_id": "\udfff"},
        {"image": {"url": "https://a/\x00"}},
    ],
)
def test_text_postgres_or_utf8_cannot_hold_is_invalid(fields: dict[str, object]) -> None:
    """NUL characters and unpaired surrogates (legal in JSON) are refused before they reach SQL."""
    with pytest.raises(InvalidEvent, match="NUL character or an unpaired surrogate"):
        parse_post_event(_event(**fields))


def test_peek_post_id_ignores_ids_that_cannot_be_stored() -> None:
    """A post_id with NUL or a lone surrogate is not used for an error verdict row."""
    assert peek_post_id(json.dumps({"post_id": "a\x00"}).encode()) is None
    assert peek_post_id(json.dumps({"post_id": "\ud800"}).encode()) is None


def test_odd_but_valid_unicode_is_accepted() -> None:
    """Emoji, right-to-left text, combining marks and zero-width joiners are ordinary captions."""
    caption = "كلب 🐕‍🦺 on the be\u0301ach \u200b\u202e"
    assert parse_post_event(_event(caption=caption)).caption == caption
