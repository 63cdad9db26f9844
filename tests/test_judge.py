"""The scoring front door with a fake scorer and fetcher: one outcome per record, whatever the
input."""

from __future__ import annotations

import asyncio
import io
import json

from PIL import Image

from worker.config import FetchLimits
from worker.errors import ImageFetchTimeout, InputError
from worker.judge import judge, judge_batches
from worker.testing import FakeFetcher, FakeScorer, post_event, shape_image
from worker.verdicts import Outcome, Record


def _rec(payload: bytes, offset: int = 0) -> Record:
    return Record(payload, topic="posts", partition=0, offset=offset)


def score_records(
    records: list[Record],
    scorer: FakeScorer,
    limits: FetchLimits,
    fetched: dict[str, bytes | InputError] | None = None,
) -> list[Outcome]:
    return asyncio.run(judge(records, scorer, FakeFetcher(fetched or {}), limits))


def test_good_records_are_scored_in_one_call_and_decided() -> None:
    """Valid records are scored together; the threshold splits match from mismatch."""
    image = shape_image("red", "circle")
    scorer = FakeScorer(lambda _, caption: 0.9 if "red" in caption else 0.1)
    records = [
        _rec(post_event("a", "a red circle", image)),
        _rec(post_event("b", "a blue one", image)),
    ]
    outcomes = score_records(records, scorer, FetchLimits())
    assert scorer.calls == [2]
    assert [(o.verdict.post_id, o.verdict.verdict) for o in outcomes] == [
        ("a", "match"),
        ("b", "mismatch"),
    ]
    assert all(o.dead_letter is None for o in outcomes)
    assert outcomes[0].review is None
    review = outcomes[1].review
    assert (review.caption, review.image_url) == ("a blue one", None)
    thumb = Image.open(io.BytesIO(review.thumbnail))
    assert thumb.format == "JPEG" and max(thumb.size) <= 256


def test_bad_records_get_error_verdicts_and_dead_letters_in_place() -> None:
    """Each bad record keeps its position, gets its code, and the good ones still score."""
    image = shape_image("red", "circle")
    scorer = FakeScorer(lambda *_: 0.8)
    records = [
        _rec(b"{oops", 0),
        _rec(post_event("ok", "a red circle", image), 1),
        _rec(json.dumps({"post_id": "nocap", "image": {"data": ""}}).encode(), 2),
        _rec(post_event("txt", "a red circle", b"not an image"), 3),
        _rec(
            json.dumps(
                {"post_id": "url", "caption": "c", "image": {"url": "https://x/y"}}
            ).encode(),
            4,
        ),
    ]
    fetched = {"https://x/y": ImageFetchTimeout("no answer")}
    outcomes = score_records(records, scorer, FetchLimits(), fetched)
    assert [o.record.offset for o in outcomes] == [0, 1, 2, 3, 4]
    assert outcomes[0].verdict is None and outcomes[0].dead_letter["reason"] == "invalid_json"
    assert outcomes[1].verdict.verdict == "match" and outcomes[1].dead_letter is None
    codes = [
        (o.verdict.post_id, o.verdict.error_code, o.dead_letter["reason"]) for o in outcomes[2:]
    ]
    assert codes == [
        ("nocap", "invalid_event", "invalid_event"),
        ("txt", "image_decode_failed", "image_decode_failed"),
        ("url", "image_fetch_timeout", "image_fetch_timeout"),
    ]
    assert scorer.calls == [1]


def test_a_pair_that_breaks_the_model_fails_alone() -> None:
    """When the batch call raises, pairs are retried one by one and only the culprit fails."""
    image = shape_image("red", "circle")

    def rule(_: Image.Image, caption: str) -> float:
        if caption == "poison":
            raise RuntimeError("model blew up")
        return 0.7

    scorer = FakeScorer(rule)
    records = [
        _rec(post_event(p, c, image)) for p, c in [("a", "fine"), ("b", "poison"), ("c", "ok")]
    ]
    outcomes = score_records(records, scorer, FetchLimits())
    assert [o.verdict.verdict for o in outcomes] == ["match", "error", "match"]
    assert outcomes[1].verdict.error_code == "inference_failed"
    assert outcomes[1].dead_letter["reason"] == "inference_failed"


def test_nan_scores_become_inference_failures() -> None:
    """A score the model could not give (NaN) is an error verdict, never a match."""
    image = shape_image("red", "circle")
    scorer = FakeScorer(lambda *_: float("nan"))
    (outcome,) = score_records([_rec(post_event("a", "x", image))], scorer, FetchLimits())
    assert (outcome.verdict.verdict, outcome.verdict.error_code) == ("error", "inference_failed")


def test_event_time_prefers_created_at_then_kafka_timestamp() -> None:
    """event_time is the post's created_at when given, else the record's timestamp."""
    from datetime import UTC, datetime

    image = shape_image("red", "circle")
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        Record(
            post_event("a", "x", image, created_at="2026-11-28T10:00:00Z"), "posts", timestamp=stamp
        ),
        Record(post_event("b", "x", image), "posts", timestamp=stamp),
    ]
    a, b = score_records(records, FakeScorer(lambda *_: 0.9), FetchLimits())
    assert a.verdict.event_time == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert b.verdict.event_time == stamp


def test_fetched_url_images_are_scored_with_the_inline_ones() -> None:
    """URL events list their URL once for fetching, score from the fetched bytes and keep
    a thumbnail of that picture for review."""
    image = shape_image("blue", "square")
    url_event = {"post_id": "u", "caption": "a blue square", "image": {"url": "https://img/a.png"}}
    records = [
        _rec(json.dumps(url_event).encode()),
        _rec(json.dumps(url_event | {"post_id": "v"}).encode()),
        _rec(post_event("i", "inline", image)),
    ]
    fetcher = FakeFetcher({"https://img/a.png": image})
    scorer = FakeScorer(lambda *_: 0.9)
    outcomes = asyncio.run(judge(records, scorer, fetcher, FetchLimits()))
    assert fetcher.asked == [["https://img/a.png"]]
    assert [o.verdict.verdict for o in outcomes] == ["match", "match", "match"]
    assert scorer.calls == [3]
    flagged = score_records(records, FakeScorer(lambda *_: 0.1), FetchLimits(), fetcher.answers)
    assert [o.review.image_url for o in flagged] == ["https://img/a.png", "https://img/a.png", None]
    # the picture the model scored is kept for URL images as for inline ones
    assert all(o.review.thumbnail.startswith(b"\xff\xd8") for o in flagged)


def test_a_batch_of_inline_images_fetches_nothing() -> None:
    """Records whose images are inline never ask the fetcher."""
    fetcher = FakeFetcher()
    records = [_rec(post_event("a", "x", shape_image("red", "circle")))]
    asyncio.run(judge(records, FakeScorer(lambda *_: 0.9), fetcher, FetchLimits()))
    assert fetcher.asked == []


def test_judge_batches_runs_every_batch_and_closes_the_fetcher() -> None:
    """The loop-less front door judges batches in order on one fetcher, then closes it."""
    image = shape_image("red", "circle")
    batches = [[_rec(post_event(f"p{i}{j}", "x", image)) for j in range(i + 1)] for i in range(3)]
    fetcher = FakeFetcher()
    scorer = FakeScorer(lambda *_: 0.9)
    got = list(judge_batches(batches, scorer, fetcher, FetchLimits()))
    assert [[o.verdict.post_id for o in outcomes] for outcomes in got] == [
        ["p00"],
        ["p10", "p11"],
        ["p20", "p21", "p22"],
    ]
    assert scorer.calls == [1, 2, 3]
    assert fetcher.closed


def _big_jpeg(size: tuple[int, int] = (2448, 1632)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _seen_sizes(scorer: FakeScorer, payload: bytes) -> tuple[list[tuple[int, int]], Outcome]:
    seen: list[tuple[int, int]] = []

    def rule(image: Image.Image, _: str) -> float:
        seen.append(image.size)
        return 0.1

    scorer.rule = rule
    limits = FetchLimits(max_bytes=10_000_000)
    (outcome,) = score_records([_rec(payload)], scorer, limits)
    return seen, outcome


def test_a_scorer_that_tells_its_input_size_gets_reduced_pictures() -> None:
    """A 4 MP JPEG reaches a 224-pixel model at half scale (both sides >= 448), and its review
    thumbnail is still 256 pixels on its longer side."""
    seen, outcome = _seen_sizes(
        FakeScorer(lambda *_: 0.0, input_size=(224, 224)), post_event("a", "x", _big_jpeg())
    )
    assert seen == [(1224, 816)]
    thumb = Image.open(io.BytesIO(outcome.review.thumbnail))
    assert max(thumb.size) == 256


def test_a_scorer_without_an_input_size_gets_full_pictures() -> None:
    """A scorer that does not tell its input size gets the picture at full size, as before."""
    seen, _ = _seen_sizes(FakeScorer(lambda *_: 0.0), post_event("a", "x", _big_jpeg()))
    assert seen == [(2448, 1632)]
