"""The pipeline overlaps the stages of consecutive batches and acknowledges in order."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from PIL import Image

from tests.test_handler import FakeStore, FakeTopic
from worker.config import Settings
from worker.handler import BatchHandler
from worker.pipeline import Pipeline, PipelineBroken
from worker.testing import FakeScorer, post_event, shape_image
from worker.verdicts import Outcome, Record

STEP_S = 0.15


class Timeline:
    """What happened when, from any thread, as (what, batch, start, end)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, int, float, float]] = []
        self._lock = threading.Lock()

    def timed(self, what: str, batch: int, work: Callable[[], Any]) -> Any:
        start = time.monotonic()
        try:
            return work()
        finally:
            with self._lock:
                self.spans.append((what, batch, start, time.monotonic()))

    def span(self, what: str, batch: int) -> tuple[float, float]:
        (found,) = [(s, e) for w, b, s, e in self.spans if (w, b) == (what, batch)]
        return found


def _batch_of(caption: str) -> int:
    return int(caption.split()[-1])


class SlowScorer(FakeScorer):
    """Takes STEP_S per model call, as a model busy on its own thread would."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__(lambda _, caption: 0.9)
        self.timeline = timeline

    def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> Any:
        return self.timeline.timed(
            "score",
            _batch_of(captions[0]),
            lambda: (time.sleep(STEP_S), super(SlowScorer, self).score(images, captions))[1],
        )


class SlowStore(FakeStore):
    """Takes `seconds[batch]` (STEP_S by default) per write; `broken` batches raise a bug."""

    def __init__(self, timeline: Timeline, seconds: dict[int, float], broken: set[int]) -> None:
        super().__init__()
        self.timeline, self.seconds, self.broken = timeline, seconds, broken

    def __call__(self, outcomes: Sequence[Outcome]) -> int:
        batch = _batch_of(json.loads(outcomes[0].record.payload)["caption"])

        def write() -> int:
            time.sleep(self.seconds.get(batch, STEP_S))
            if batch in self.broken:
                raise ValueError("a bug in the store")
            return super(SlowStore, self).__call__(outcomes)

        return int(self.timeline.timed("write", batch, write))


def _batches(count: int, size: int = 4) -> list[list[Record]]:
    image = shape_image("red", "circle")
    return [
        [
            Record(post_event(f"p{b}-{i}", f"batch {b}", image), topic="posts", offset=b * size + i)
            for i in range(size)
        ]
        for b in range(count)
    ]


def _acker(acked: list[int], number: int) -> Callable[[], Awaitable[None]]:
    async def ack() -> None:
        acked.append(number)

    return ack


def _run(
    batches: list[list[Record]],
    *,
    seconds: dict[int, float] | None = None,
    broken: frozenset[int] = frozenset(),
) -> tuple[Timeline, list[int], PipelineBroken | None]:
    """Feed `batches` through a pipeline; returns the timeline, the batches acknowledged (in
    acknowledgement order) and what submit or drain raised."""
    timeline, acked = Timeline(), []
    store = SlowStore(timeline, seconds or {}, set(broken))
    handler = BatchHandler(Settings(), SlowScorer(timeline), store, FakeTopic(), FakeTopic())

    async def main() -> PipelineBroken | None:
        pipeline = Pipeline(handler, on_abandoned=lambda size, exc: None)
        try:
            for number, records in enumerate(batches):
                await pipeline.submit(records, _acker(acked, number))
            await pipeline.drain()
        except PipelineBroken as exc:
            await asyncio.sleep(STEP_S * 4)  # let whatever is still in flight show itself
            return exc
        return None

    raised = asyncio.run(main())
    return timeline, acked, raised


def test_a_batch_is_scored_while_the_one_before_is_written() -> None:
    """With model and store each taking the same time, batch 1 is in the model while batch 0
    is being written, and three batches take about four steps, not six."""
    timeline, acked, raised = _run(_batches(3))
    assert raised is None and acked == [0, 1, 2]
    write0, score1 = timeline.span("write", 0), timeline.span("score", 1)
    assert score1[0] < write0[1] and write0[0] < score1[1]
    first = min(s for _, _, s, _ in timeline.spans)
    last = max(e for _, _, _, e in timeline.spans)
    assert last - first < STEP_S * 5.5


def test_batches_are_acknowledged_in_arrival_order_whatever_their_speed() -> None:
    """A slow write of batch 0 holds back the acknowledgement of batches 1 and 2, which are
    written only after it."""
    timeline, acked, raised = _run(_batches(3), seconds={0: STEP_S * 4, 1: 0.0, 2: 0.0})
    assert raised is None and acked == [0, 1, 2]
    assert timeline.span("write", 1)[0] >= timeline.span("write", 0)[1]


def test_a_failed_batch_leaves_it_and_every_later_batch_unacknowledged() -> None:
    """A bug while writing batch 1 stops the pipeline: batch 0 is acknowledged, batches 1 and
    2 never are, batch 2 is never written, and the caller gets PipelineBroken."""
    timeline, acked, raised = _run(_batches(4), broken=frozenset({1}))
    assert isinstance(raised, PipelineBroken) and "a bug in the store" in str(raised)
    assert acked == [0]
    assert [b for w, b, *_ in timeline.spans if w == "write"] == [0, 1]


def test_an_abandoned_batch_reports_and_acknowledges_nothing_after_it() -> None:
    """A store that stays down past the shutdown grace abandons the first batch, with its
    size; neither it nor the batch after it is acknowledged."""
    abandoned: list[int] = []
    acked: list[int] = []
    handler = BatchHandler(
        Settings(shutdown_grace_s=0),
        FakeScorer(lambda *_: 0.9),
        FakeStore(forever=True),
        FakeTopic(),
        FakeTopic(),
        stopping=lambda: True,
    )

    async def main() -> None:
        pipeline = Pipeline(handler, on_abandoned=lambda size, exc: abandoned.append(size))
        for number, records in enumerate(_batches(2, size=3)):
            await pipeline.submit(records, _acker(acked, number))
        with pytest.raises(PipelineBroken, match="write_verdicts still failing"):
            await pipeline.drain()

    asyncio.run(main())
    assert abandoned == [3] and acked == []


def test_cancelling_stops_every_batch_in_flight_unacknowledged() -> None:
    """Cancelled while batch 0 is written and batch 1 is in the model, neither is
    acknowledged, and nothing runs on afterwards."""
    timeline = Timeline()
    handler = BatchHandler(
        Settings(),
        SlowScorer(timeline),
        SlowStore(timeline, {0: STEP_S * 3}, set()),
        FakeTopic(),
        FakeTopic(),
    )
    acked: list[int] = []

    async def main() -> None:
        pipeline = Pipeline(handler, on_abandoned=lambda size, exc: None)
        for number, records in enumerate(_batches(2)):
            await pipeline.submit(records, _acker(acked, number))
        await asyncio.sleep(STEP_S * 2)
        pipeline.cancel()
        await asyncio.sleep(STEP_S * 4)

    asyncio.run(main())
    assert acked == []
