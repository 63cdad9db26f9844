"""One batch of raw messages in, one outcome per message out.

This is the whole scoring path with no Kafka and no database in it: the Faust
agent and `itmguard score --input` both call `parse_records`, fetch
`image_urls`, then `score_parsed`, and differ only in where records come from
and where outcomes go. Every record yields exactly
one `Outcome`; a bad record never takes its batch down with it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from PIL import Image

from worker.config import FetchLimits
from worker.errors import InferenceFailed, InputError
from worker.events import PostEvent, dead_letter_message, parse_post_event, peek_post_id
from worker.images import decode_image
from worker.verdicts import Verdict, decide

if TYPE_CHECKING:
    from worker.scoring import Scorer

__all__ = [
    "THUMBNAIL_SIZE",
    "Outcome",
    "Parsed",
    "Record",
    "ReviewContent",
    "image_urls",
    "parse_records",
    "score_parsed",
    "thumbnail_jpeg",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Record:
    """A raw message and where it came from."""

    payload: bytes
    topic: str
    partition: int | None = None
    offset: int | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one record.

    `verdict` is None only for a record with no usable post_id: there is no
    post to attach a row to, so it exists only as a dead letter.
    """

    record: Record
    verdict: Verdict | None
    dead_letter: dict[str, Any] | None
    review: ReviewContent | None = None


@dataclass(frozen=True)
class ReviewContent:
    """What a moderator needs to judge a mismatch without another system.

    Inline images keep a small JPEG thumbnail; URL images keep their URL.
    """

    caption: str
    image_url: str | None
    thumbnail: bytes | None


THUMBNAIL_SIZE = 256


def thumbnail_jpeg(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """A JPEG no larger than `size` on its longer side."""
    small = image.copy()
    small.thumbnail((size, size))
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=80)
    return out.getvalue()


@dataclass(frozen=True)
class Parsed:
    """A record after validation: its event, or the reason it has none."""

    record: Record
    event: PostEvent | None
    error: InputError | None


@dataclass(frozen=True)
class _Ready:
    record: Record
    event: PostEvent
    image: Image.Image


def parse_records(records: Sequence[Record]) -> list[Parsed]:
    """Validate every record against the post-event schema."""
    parsed = []
    for record in records:
        try:
            parsed.append(Parsed(record, parse_post_event(record.payload), None))
        except InputError as exc:
            parsed.append(Parsed(record, None, exc))
    return parsed


def image_urls(parsed: Sequence[Parsed]) -> list[str]:
    """The image URLs to fetch before `score_parsed`, each once."""
    return list(dict.fromkeys(p.event.image.url for p in parsed if p.event and p.event.image.url))


def score_parsed(
    parsed: Sequence[Parsed],
    scorer: Scorer,
    limits: FetchLimits,
    *,
    fetched: Mapping[str, bytes | InputError] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Outcome]:
    """Decode and score parsed records; outcomes come back in record order.

    `fetched` maps each of `image_urls(parsed)` to its bytes or its fetch error.
    """
    fetched = fetched or {}
    outcomes: dict[int, Outcome] = {}
    ready: list[tuple[int, _Ready]] = []
    for i, item in enumerate(parsed):
        try:
            if item.error is not None:
                raise item.error
            assert item.event is not None
            source = item.event.image
            data = source.data if source.url is None else fetched[source.url]
            if isinstance(data, InputError):
                raise data
            assert data is not None
            ready.append((i, _Ready(item.record, item.event, decode_image(data, limits))))
        except InputError as exc:
            post_id = item.event.post_id if item.event else peek_post_id(item.record.payload)
            outcomes[i] = _failed(item.record, post_id, exc, scorer, clock(), item.event)
    scores = _score_all([item for _, item in ready], scorer)
    for (index, ready_item), score in zip(ready, scores, strict=True):
        outcomes[index] = _scored(ready_item, score, scorer, clock())
    return [outcomes[i] for i in range(len(parsed))]


def _score_all(items: list[_Ready], scorer: Scorer) -> list[float]:
    """One score per item; a batch that raises is retried one pair at a time."""
    if not items:
        return []
    images = [item.image for item in items]
    captions = [item.event.caption for item in items]
    try:
        return [float(s) for s in scorer.score(images, captions)]
    except Exception as exc:  # noqa: BLE001 - the model's own errors are not ours to name
        log.warning("batch_inference_failed", size=len(items), error=type(exc).__name__)
    return [_score_one(scorer, image, caption) for image, caption in zip(images, captions, strict=True)]


def _score_one(scorer: Scorer, image: Image.Image, caption: str) -> float:
    try:
        return float(scorer.score([image], [caption])[0])
    except Exception:  # noqa: BLE001
        return math.nan


def _event_time(record: Record, event: PostEvent | None) -> datetime | None:
    if event is not None and event.created_at is not None:
        return event.created_at
    return record.timestamp


def _scored(item: _Ready, score: float, scorer: Scorer, now: datetime) -> Outcome:
    if math.isnan(score):
        exc = InferenceFailed("the model gave no probability for this pair")
        return _failed(item.record, item.event.post_id, exc, scorer, now, item.event)
    verdict = Verdict(
        post_id=item.event.post_id,
        model_id=scorer.model_id,
        score=score,
        threshold=scorer.threshold,
        verdict=decide(score, scorer.threshold),
        error_code=None,
        scored_at=now,
        event_time=_event_time(item.record, item.event),
    )
    review = None
    if verdict.verdict == "mismatch":
        source = item.event.image
        review = ReviewContent(
            caption=item.event.caption,
            image_url=source.url,
            thumbnail=thumbnail_jpeg(item.image) if source.url is None else None,
        )
    return Outcome(item.record, verdict, None, review)


def _failed(
    record: Record,
    post_id: str | None,
    exc: InputError,
    scorer: Scorer,
    now: datetime,
    event: PostEvent | None = None,
) -> Outcome:
    verdict = None
    if post_id is not None:
        verdict = Verdict(
            post_id=post_id,
            model_id=scorer.model_id,
            score=None,
            threshold=scorer.threshold,
            verdict="error",
            error_code=exc.code,
            scored_at=now,
            event_time=_event_time(record, event),
        )
    letter = dead_letter_message(
        payload=record.payload,
        post_id=post_id,
        reason=exc.code,
        detail=str(exc),
        model_id=scorer.model_id,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        failed_at=now,
    )
    return Outcome(record, verdict, letter)
