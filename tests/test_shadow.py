"""The shadow model: stored beside the primary, never flagged, never holding it up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from tests.test_handler import FakeStore, FakeTopic, _records
from worker.config import Settings
from worker.errors import BundleFileMissing
from worker.handler import BatchHandler
from worker.metrics import Metrics
from worker.shadow import Shadow, open_shadow
from worker.testing import FakeScorer


def _primary() -> FakeScorer:
    return FakeScorer(lambda _, caption: 0.9 if "red" in caption else 0.1)


class Failing(FakeScorer):
    """A shadow whose every model call raises, or (with `delay`) sleeps first."""

    def __init__(self, delay: float = 0.0, raises: bool = True) -> None:
        super().__init__(lambda *_: 0.05, model_id="shadow@2")
        self.delay, self.raises = delay, raises

    def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
        time.sleep(self.delay)
        if self.raises:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().score(images, captions)


def _run(
    shadow_scorer: FakeScorer | None, wait_s: float = 5.0, batches: int = 1
) -> tuple[FakeStore, FakeTopic, Metrics, float]:
    store, flags, metrics = FakeStore(), FakeTopic(), Metrics()
    shadow = Shadow(shadow_scorer, wait_s, metrics) if shadow_scorer is not None else None
    handler = BatchHandler(
        Settings(), _primary(), store, flags, FakeTopic(), metrics=metrics, shadow=shadow
    )

    async def main() -> None:
        for _ in range(batches):
            await handler.handle(_records())

    started = time.monotonic()
    asyncio.run(main())
    return store, flags, metrics, time.monotonic() - started


def _rows(store: FakeStore) -> list[tuple[Any, ...]]:
    return sorted(
        (o.verdict.post_id, o.verdict.model_id, o.verdict.role, o.verdict.verdict)
        for batch in store.batches
        for o in batch
        if o.verdict is not None
    )


def _without_times(sent: list[tuple[bytes | None, dict[str, Any]]]) -> list[Any]:
    return [(key, {k: v for k, v in flag.items() if k != "scored_at"}) for key, flag in sent]


def test_shadow_verdicts_are_stored_marked_and_never_flagged_or_queued() -> None:
    """The shadow calls every post a mismatch: its verdicts are stored as role shadow,
    without review items; the flags and the primary's rows are the primary's alone."""
    store, flags, metrics, _ = _run(FakeScorer(lambda *_: 0.05, model_id="shadow@2"))
    rows = _rows(store)
    assert [r for r in rows if r[2] == "shadow"] == [
        ("bad", "shadow@2", "shadow", "mismatch"),
        ("ok", "shadow@2", "shadow", "mismatch"),
        ("twice", "shadow@2", "shadow", "mismatch"),
    ]
    assert [r for r in rows if r[2] == "primary"] == [
        ("bad", "fake@1", "primary", "mismatch"),
        ("ok", "fake@1", "primary", "match"),
        ("twice", "fake@1", "primary", "match"),
    ]
    shadow_outcomes = [o for b in store.batches for o in b if o.verdict.role == "shadow"]
    assert all(o.review is None and o.dead_letter is None for o in shadow_outcomes)
    assert [v["model_id"] for _, v in flags.sent] == ["fake@1"]
    count = metrics.registry.get_sample_value
    labels = {"model_id": "shadow@2", "role": "shadow", "verdict": "mismatch"}
    assert count("itmguard_verdicts_total", labels) == 3


def test_a_shadow_whose_model_raises_leaves_the_primary_as_without_one() -> None:
    """Every shadow model call raises: the primary's rows and flags are exactly those of a
    run without a shadow; the shadow's posts are stored as its error verdicts, and the
    failure is counted."""
    alone, alone_flags, _, _ = _run(None)
    store, flags, metrics, _ = _run(Failing())
    rows = _rows(store)
    assert [r for r in rows if r[2] == "primary"] == _rows(alone)
    assert _without_times(flags.sent) == _without_times(alone_flags.sent)
    assert {(r[1], r[3]) for r in rows if r[2] == "shadow"} == {("shadow@2", "error")}
    count = metrics.registry.get_sample_value
    assert count("itmguard_shadow_failures_total", {"reason": "inference"}) == 1


def test_a_slow_shadow_delays_a_batch_by_at_most_its_wait_and_then_skips() -> None:
    """A shadow taking 1.5 s per call with a 0.2 s wait: the first batch is delivered
    without its verdicts after about the wait, the second finds it still busy and skips it."""
    store, flags, metrics, seconds = _run(Failing(delay=1.5, raises=False), wait_s=0.2, batches=2)
    assert seconds < 1.2
    assert {r[2] for r in _rows(store)} == {"primary"}
    assert len(flags.sent) == 2
    count = metrics.registry.get_sample_value
    assert count("itmguard_shadow_failures_total", {"reason": "late"}) == 1
    assert count("itmguard_shadow_failures_total", {"reason": "busy"}) == 1


def test_a_shadow_that_cannot_load_or_is_the_primary_is_left_out() -> None:
    """A missing shadow bundle, or one with the primary's model id, gives no shadow and a
    counted load failure; the worker goes on with its primary."""
    metrics = Metrics()

    def missing() -> FakeScorer:
        raise BundleFileMissing("/bundles/next", "model.onnx")

    assert open_shadow(missing, _primary(), 2.0, metrics) is None
    assert open_shadow(_primary, _primary(), 2.0, metrics) is None
    assert (
        metrics.registry.get_sample_value("itmguard_shadow_failures_total", {"reason": "load"}) == 2
    )
    shadow = open_shadow(lambda: Failing(raises=False), _primary(), 2.0, metrics)
    assert shadow is not None and shadow.scorer.model_id == "shadow@2"
