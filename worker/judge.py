"""Raw records in, one outcome per record out: parse, fetch, decode, score, decide.

This is the one front door to scoring. The Faust agent, `itmguard score`,
`itmguard calibrate` and the benchmarks all call `judge` (or `judge_batches`
where there is no event loop), and differ only in where records come from and
where outcomes go. The worker calls its two halves apart: `prepare` (parse,
fetch, decode: CPU work spread over a pool) and `score_prepared` (the model
call, on one thread), so that one batch decodes while the one before it is in
inference. There is no Kafka, SQL or HTTP in here: the scorer and the image
fetcher are handed in. Every record yields exactly one `Outcome`; a bad record
never takes its batch down with it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import structlog
from PIL import Image

from worker.config import FetchLimits
from worker.errors import InferenceFailed, InputError
from worker.events import PostEvent, parse_post_event, peek_post_id
from worker.explain import Explanation, explain_batch
from worker.images import decode_image, decode_size, thumbnail_jpeg
from worker.messages import dead_letter_message
from worker.verdicts import Outcome, Record, ReviewContent, Verdict, decide

if TYPE_CHECKING:
    from worker.scoring import Scorer

__all__ = [
    "Clock",
    "Fetcher",
    "Fit",
    "Prepared",
    "add_thumbnails",
    "judge",
    "judge_batches",
    "prepare",
    "score_prepared",
]

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
Fit = Callable[[Image.Image], Image.Image]
"""A decoded picture as a model's input takes it: `Scorer.fit`."""


class Fetcher(Protocol):
    """Fetches image URLs; `worker.fetch.ImageFetcher` in production, a dict in tests."""

    async def fetch_all(self, urls: Iterable[str]) -> Mapping[str, bytes | InputError]:
        """Each URL's bytes, or the `InputError` it failed with."""
        ...

    async def close(self) -> None:
        """Release connections; called on the event loop that fetched."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Ready:
    """A record whose picture decoded: all the model needs.

    `image` is the decoded picture (reduced to what the models and the review
    thumbnail need); `fitted` is it as the primary model's input takes it.
    """

    record: Record
    event: PostEvent
    image: Image.Image
    fitted: Image.Image


@dataclass(frozen=True)
class _Rejected:
    """A record that cannot be scored, and why."""

    record: Record
    post_id: str | None
    event: PostEvent | None
    error: InputError


Prepared = Sequence[_Ready | _Rejected]
"""A batch after `prepare`, one entry per record, in record order."""


async def judge(
    records: Sequence[Record],
    scorer: Scorer,
    fetcher: Fetcher,
    limits: FetchLimits,
    *,
    executor: Executor | None = None,
    clock: Clock = _utc_now,
) -> list[Outcome]:
    """Judge one batch of raw records; outcomes come back in record order.

    Parsing, decoding and inference run in `executor` (the loop's default when
    None), so an event loop that also heartbeats and commits never waits on them.
    URL images are fetched on the loop, each distinct URL once.
    """
    prepared = await prepare(
        records, fetcher, limits, input_size=scorer.input_size, fit=scorer.fit, executor=executor
    )
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, score_prepared, prepared, scorer, clock)


def judge_batches(
    batches: Iterable[Sequence[Record]], scorer: Scorer, fetcher: Fetcher, limits: FetchLimits
) -> Iterator[list[Outcome]]:
    """`judge` for callers without an event loop: one loop and one fetcher for all batches."""
    with asyncio.Runner() as runner:
        try:
            for batch in batches:
                yield runner.run(judge(batch, scorer, fetcher, limits))
        finally:
            runner.run(fetcher.close())


async def add_thumbnails(
    outcomes: Sequence[Outcome], prepared: Prepared, executor: Executor | None = None
) -> list[Outcome]:
    """`outcomes` with the review thumbnails `score_prepared(thumbnails=False)` left out,
    each made in `executor` from the decoded picture of its record."""
    loop = asyncio.get_running_loop()

    async def complete(outcome: Outcome, item: _Ready | _Rejected) -> Outcome:
        review = outcome.review
        if review is None or review.thumbnail is not None or not isinstance(item, _Ready):
            return outcome
        thumbnail = await loop.run_in_executor(executor, thumbnail_jpeg, item.image)
        return replace(outcome, review=replace(review, thumbnail=thumbnail))

    return list(await asyncio.gather(*map(complete, outcomes, prepared)))


async def prepare(
    records: Sequence[Record],
    fetcher: Fetcher,
    limits: FetchLimits,
    *,
    input_size: tuple[int, int] | None,
    fit: Fit | None = None,
    executor: Executor | None = None,
) -> Prepared:
    """Parse every record, fetch its picture, decode it no larger than `input_size` needs
    and `fit` it to the model's input; each picture is its own task in `executor`, so a
    pool of threads decodes a batch in parallel (Pillow releases the GIL while it decodes
    and resizes) and the model's thread is left only the model."""
    loop = asyncio.get_running_loop()
    parsed = await loop.run_in_executor(executor, _parse_all, records)
    events = [e for _, e in parsed if isinstance(e, PostEvent)]
    urls = list(dict.fromkeys(e.image.url for e in events if e.image.url))
    fetched = await fetcher.fetch_all(urls) if urls else {}
    min_size = None if input_size is None else decode_size(input_size)
    return await asyncio.gather(
        *(
            loop.run_in_executor(executor, _decode, item, limits, fetched, min_size, fit)
            for item in parsed
        )
    )


def score_prepared(
    prepared: Prepared,
    scorer: Scorer,
    clock: Clock = _utc_now,
    *,
    fitted: bool = True,
    thumbnails: bool = True,
) -> list[Outcome]:
    """One outcome per entry of `prepared`, in its order: all decoded pictures of the batch
    go to the model in one call, and the caption variants that explain its mismatches in
    one more (`worker.explain`).

    `fitted=False` scores the decoded pictures rather than those fitted to the primary
    model (a shadow model's input may differ). `thumbnails=False` leaves the review items'
    thumbnails to `add_thumbnails`, off the model's thread.
    """
    ready = [item for item in prepared if isinstance(item, _Ready)]
    images = [item.fitted if fitted else item.image for item in ready]
    captions = [item.event.caption for item in ready]
    scored = _score_all(images, captions, scorer)
    explained = explain_batch(scorer, images, captions, scored)
    scores = iter(zip(scored, explained, strict=True))
    outcomes = []
    for item in prepared:
        if isinstance(item, _Ready):
            outcomes.append(_scored(item, *next(scores), scorer, clock(), thumbnails))
        else:
            outcomes.append(
                _failed(item.record, item.post_id, item.error, scorer, clock(), item.event)
            )
    return outcomes


def _parse_all(records: Sequence[Record]) -> list[tuple[Record, PostEvent | InputError]]:
    parsed: list[tuple[Record, PostEvent | InputError]] = []
    for record in records:
        try:
            parsed.append((record, parse_post_event(record.payload)))
        except InputError as exc:
            parsed.append((record, exc))
    return parsed


def _decode(
    item: tuple[Record, PostEvent | InputError],
    limits: FetchLimits,
    fetched: Mapping[str, bytes | InputError],
    min_size: tuple[int, int] | None,
    fit: Fit | None,
) -> _Ready | _Rejected:
    record, event = item
    if isinstance(event, InputError):
        return _Rejected(record, peek_post_id(record.payload), None, event)
    source = event.image
    data = source.data if source.url is None else fetched[source.url]
    if isinstance(data, InputError):
        return _Rejected(record, event.post_id, event, data)
    assert data is not None
    try:
        image = decode_image(data, limits, min_size=min_size)
    except InputError as exc:
        return _Rejected(record, event.post_id, event, exc)
    return _Ready(record, event, image, image if fit is None else fit(image))


def _score_all(
    images: Sequence[Image.Image], captions: Sequence[str], scorer: Scorer
) -> list[float]:
    """One score per pair; a batch that raises is retried one pair at a time."""
    if not images:
        return []
    try:
        return [float(s) for s in scorer.score(images, captions)]
    except Exception as exc:  # noqa: BLE001 - the model's own errors are not ours to name
        log.warning("batch_inference_failed", size=len(images), error=type(exc).__name__)
    return [
        _score_one(scorer, image, caption) for image, caption in zip(images, captions, strict=True)
    ]


def _score_one(scorer: Scorer, image: Image.Image, caption: str) -> float:
    try:
        return float(scorer.score([image], [caption])[0])
    except Exception:  # noqa: BLE001
        return math.nan


def _event_time(record: Record, event: PostEvent | None) -> datetime | None:
    if event is not None and event.created_at is not None:
        return event.created_at
    return record.timestamp


def _scored(
    item: _Ready,
    score: float,
    explanation: Explanation | None,
    scorer: Scorer,
    now: datetime,
    thumbnail: bool,
) -> Outcome:
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
        # the picture the model scored is kept for URL images too: the image at the URL
        # may change, and a moderator's browser should never have to fetch it
        review = ReviewContent(
            caption=item.event.caption,
            image_url=item.event.image.url,
            thumbnail=thumbnail_jpeg(item.image) if thumbnail else None,
            author_id=item.event.author_id,
            explanation=explanation,
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
