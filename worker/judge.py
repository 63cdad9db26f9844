"""Raw records in, one outcome per record out: parse, fetch, decode, score, decide.

This is the one front door to scoring. The Faust agent, `itmguard score`,
`itmguard calibrate` and the benchmarks all call `judge` (or `judge_batches`
where there is no event loop), and differ only in where records come from and
where outcomes go. There is no Kafka, SQL or HTTP in here: the scorer and the
image fetcher are handed in. Every record yields exactly one `Outcome`; a bad
record never takes its batch down with it.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import structlog
from PIL import Image

from worker.config import FetchLimits
from worker.errors import InferenceFailed, InputError
from worker.events import PostEvent, parse_post_event, peek_post_id
from worker.images import decode_image, decode_size, thumbnail_jpeg
from worker.messages import dead_letter_message
from worker.verdicts import Outcome, Record, ReviewContent, Verdict, decide

if TYPE_CHECKING:
    from worker.scoring import Scorer

__all__ = ["Clock", "Fetcher", "judge", "judge_batches"]

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


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
    loop = asyncio.get_running_loop()
    parsed = await loop.run_in_executor(executor, _parse_all, records)
    urls = list(dict.fromkeys(p.event.image.url for p in parsed if p.event and p.event.image.url))
    fetched = await fetcher.fetch_all(urls) if urls else {}
    score = functools.partial(_score_parsed, parsed, scorer, limits, fetched, clock)
    return await loop.run_in_executor(executor, score)


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


@dataclass(frozen=True)
class _Parsed:
    """A record after validation: its event, or the reason it has none."""

    record: Record
    event: PostEvent | None
    error: InputError | None


@dataclass(frozen=True)
class _Ready:
    record: Record
    event: PostEvent
    image: Image.Image


def _parse_all(records: Sequence[Record]) -> list[_Parsed]:
    parsed = []
    for record in records:
        try:
            parsed.append(_Parsed(record, parse_post_event(record.payload), None))
        except InputError as exc:
            parsed.append(_Parsed(record, None, exc))
    return parsed


def _score_parsed(
    parsed: Sequence[_Parsed],
    scorer: Scorer,
    limits: FetchLimits,
    fetched: Mapping[str, bytes | InputError],
    clock: Clock,
) -> list[Outcome]:
    outcomes: dict[int, Outcome] = {}
    ready: list[tuple[int, _Ready]] = []
    min_size = None if scorer.input_size is None else decode_size(scorer.input_size)
    for i, item in enumerate(parsed):
        try:
            ready.append((i, _decode(item, limits, fetched, min_size)))
        except InputError as exc:
            post_id = item.event.post_id if item.event else peek_post_id(item.record.payload)
            outcomes[i] = _failed(item.record, post_id, exc, scorer, clock(), item.event)
    scores = _score_all([item for _, item in ready], scorer)
    for (index, ready_item), score in zip(ready, scores, strict=True):
        outcomes[index] = _scored(ready_item, score, scorer, clock())
    return [outcomes[i] for i in range(len(parsed))]


def _decode(
    item: _Parsed,
    limits: FetchLimits,
    fetched: Mapping[str, bytes | InputError],
    min_size: tuple[int, int] | None,
) -> _Ready:
    if item.error is not None:
        raise item.error
    assert item.event is not None
    source = item.event.image
    data = source.data if source.url is None else fetched[source.url]
    if isinstance(data, InputError):
        raise data
    assert data is not None
    return _Ready(item.record, item.event, decode_image(data, limits, min_size=min_size))


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
        # the picture the model scored is kept for URL images too: the image at the URL
        # may change, and a moderator's browser should never have to fetch it
        review = ReviewContent(
            caption=item.event.caption,
            image_url=item.event.image.url,
            thumbnail=thumbnail_jpeg(item.image),
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
