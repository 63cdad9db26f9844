"""The batch handler with a fake scorer, a fake store and fake topics: no broker, no database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from PIL import Image

from worker.config import Settings
from worker.errors import BatchAbandoned, DatabaseUnavailable
from worker.handler import BatchHandler
from worker.messages import validator
from worker.metrics import Metrics
from worker.progress import BatchProgress, Step
from worker.shadow import Shadow
from worker.testing import FakeScorer, post_event, shape_image
from worker.verdicts import Outcome, Record


@dataclass
class FakeTopic:
    """Keeps what was sent; fails the first `failures` sends as a broker timeout would."""

    sent: list[tuple[bytes | None, dict[str, Any]]] = field(default_factory=list)
    failures: int = 0

    async def send(self, *, key: bytes | None, value: bytes) -> Awaitable[Any]:
        if self.failures:
            self.failures -= 1
            raise TimeoutError("no answer from the broker")
        self.sent.append((key, json.loads(value)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@dataclass
class FakeStore:
    """Keeps every batch it was given; fails the first `failures` calls as Postgres down would."""

    batches: list[list[Outcome]] = field(default_factory=list)
    failures: int = 0
    forever: bool = False

    def __call__(self, outcomes: Sequence[Outcome]) -> int:
        if self.forever or self.failures:
            self.failures = max(0, self.failures - 1)
            raise DatabaseUnavailable("database unavailable: connection refused")
        self.batches.append(list(outcomes))
        return len(outcomes)


def _handler(
    store: FakeStore, flags: FakeTopic, dlq: FakeTopic, **settings: Any
) -> tuple[BatchHandler, Metrics]:
    metrics = Metrics()
    scorer = FakeScorer(lambda _, caption: 0.9 if "red" in caption else 0.1)
    handler = BatchHandler(
        Settings(**settings), scorer, store, flags, dlq, stopping=lambda: True, metrics=metrics
    )
    return handler, metrics


def _records() -> list[Record]:
    image = shape_image("red", "circle")
    payloads = [
        post_event("ok", "a red circle", image),
        post_event("bad", "a blue square", image),
        b"{not json",
        post_event("twice", "a blue square", image),
        post_event("twice", "a red circle", image),
    ]
    return [Record(p, topic="posts", partition=0, offset=i) for i, p in enumerate(payloads)]


def test_one_batch_is_stored_flagged_dead_lettered_and_counted_once_per_post() -> None:
    """Each post's last outcome gives its row, its flag and its count; every record that
    could not be scored is dead-lettered; one outcome comes back per record."""
    store, flags, dlq = FakeStore(), FakeTopic(), FakeTopic()
    handler, metrics = _handler(store, flags, dlq)
    outcomes = asyncio.run(handler.handle(_records()))
    assert [o.record.offset for o in outcomes] == [0, 1, 2, 3, 4]
    (stored,) = store.batches
    assert [(o.verdict.post_id, o.verdict.verdict) for o in stored if o.verdict] == [
        ("ok", "match"),
        ("bad", "mismatch"),
        ("twice", "match"),
    ]
    assert [(key, message["post_id"]) for key, message in flags.sent] == [(b"bad", "bad")]
    validator("verdict.v1").validate(flags.sent[0][1])
    assert [(key, message["reason"]) for key, message in dlq.sent] == [(None, "invalid_json")]
    value = metrics.registry.get_sample_value
    assert (
        value(
            "itmguard_verdicts_total", {"model_id": "fake@1", "role": "primary", "verdict": "match"}
        )
        == 2
    )
    assert (
        value(
            "itmguard_verdicts_total",
            {"model_id": "fake@1", "role": "primary", "verdict": "mismatch"},
        )
        == 1
    )
    assert value("itmguard_dead_letters_total", {"reason": "invalid_json"}) == 1
    assert value("itmguard_batch_size_sum") == 5


def test_a_store_outage_is_retried_before_anything_is_published() -> None:
    """While the store fails, nothing is sent; once it succeeds, the batch is published."""
    store, flags, dlq = FakeStore(failures=1), FakeTopic(), FakeTopic()
    handler, metrics = _handler(store, flags, dlq, shutdown_grace_s=60)
    asyncio.run(handler.handle(_records()))
    assert len(store.batches) == 1 and len(flags.sent) == 1 and len(dlq.sent) == 1
    assert (
        metrics.registry.get_sample_value("itmguard_retries_total", {"step": "write_verdicts"}) == 1
    )


def test_a_broker_that_refuses_a_send_is_retried() -> None:
    """A send that times out makes the whole publish step run again."""
    store, flags, dlq = FakeStore(), FakeTopic(failures=1), FakeTopic()
    handler, metrics = _handler(store, flags, dlq, shutdown_grace_s=60)
    asyncio.run(handler.handle(_records()))
    assert [message["post_id"] for _, message in flags.sent] == ["bad"]
    assert metrics.registry.get_sample_value("itmguard_retries_total", {"step": "publish"}) == 1


def test_a_store_down_past_the_shutdown_grace_abandons_the_batch() -> None:
    """Stopping with the store still down raises BatchAbandoned and publishes nothing."""
    store, flags, dlq = FakeStore(forever=True), FakeTopic(), FakeTopic()
    handler, _ = _handler(store, flags, dlq, shutdown_grace_s=0)
    with pytest.raises(BatchAbandoned, match="write_verdicts"):
        asyncio.run(handler.handle(_records()))
    assert flags.sent == [] and dlq.sent == []


def test_each_step_of_a_batch_is_marked_for_the_health_probes() -> None:
    """After prepare and score, the store sees the batch at write_verdicts, its second
    attempt counting one failure; the broker sees it at publish; a durable batch leaves no
    step behind."""
    clock = iter(range(100))
    progress = BatchProgress(clock=lambda: float(next(clock)))
    store, flags, seen = FakeStore(failures=1), FakeTopic(), []

    def watched_store(outcomes: Sequence[Outcome]) -> int:
        seen.append(dict(progress.steps))
        return store(outcomes)

    class WatchedTopic(FakeTopic):
        async def send(self, *, key: bytes | None, value: bytes) -> Awaitable[Any]:
            seen.append(dict(progress.steps))
            return await super().send(key=key, value=value)

    handler = BatchHandler(
        Settings(shutdown_grace_s=60),
        FakeScorer(lambda _, caption: 0.1),
        watched_store,
        flags,
        WatchedTopic(),
        progress=progress,
    )
    asyncio.run(handler.handle(_records()))
    assert seen == [
        {"delivery": Step("write_verdicts", since=2.0)},
        {"delivery": Step("write_verdicts", since=2.0, failures=1)},
        {"delivery": Step("publish", since=3.0)},
    ]
    assert progress.steps == {}


def test_pictures_are_fitted_and_thumbnailed_off_the_model_thread(monkeypatch) -> None:
    """The model's thread gets pictures already fitted to its input and makes no
    thumbnail: both happen on the decode pool; the stored review item still has one."""
    import threading

    from worker import judge as judge_module

    threads: dict[str, set[str]] = {"fit": set(), "score": set(), "thumbnail": set()}
    sizes: list[tuple[int, int]] = []

    def seen(what: str) -> None:
        threads[what].add(threading.current_thread().name.rsplit("_", 1)[0])

    class Fitting(FakeScorer):
        def fit(self, image: Image.Image) -> Image.Image:
            seen("fit")
            return image.resize((24, 24))

        def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
            seen("score")
            sizes.extend(i.size for i in images)
            return super().score(images, captions)

    thumbnail = judge_module.thumbnail_jpeg

    def watched_thumbnail(image: Image.Image) -> bytes:
        seen("thumbnail")
        return thumbnail(image)

    monkeypatch.setattr(judge_module, "thumbnail_jpeg", watched_thumbnail)
    store = FakeStore()
    scorer = Fitting(lambda _, caption: 0.9 if "red" in caption else 0.1, input_size=(24, 24))
    handler = BatchHandler(Settings(), scorer, store, FakeTopic(), FakeTopic())
    asyncio.run(handler.handle(_records()))
    assert threads == {
        "fit": {"itmguard-decode"},
        "score": {"itmguard-model"},
        "thumbnail": {"itmguard-decode"},
    }
    assert set(sizes) == {(24, 24)}
    (queued,) = [o for o in store.batches[0] if o.review is not None]
    assert queued.review.thumbnail.startswith(b"\xff\xd8")


def test_a_shadow_with_a_larger_input_gets_pictures_decoded_for_it() -> None:
    """Primary at 16 px, shadow at 600 px: pictures are decoded for the shadow's input,
    fitted down for the primary, and the shadow scores them unfitted."""
    shadow_sizes: list[tuple[int, int]] = []

    class Large(FakeScorer):
        def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
            shadow_sizes.extend(i.size for i in images)
            return super().score(images, captions)

    class Small(FakeScorer):
        def fit(self, image: Image.Image) -> Image.Image:
            return image.resize((16, 16))

    shadow = Shadow(Large(lambda *_: 0.5, model_id="big@1", input_size=(600, 600)), 5, Metrics())
    primary = Small(lambda *_: 0.9, input_size=(16, 16))
    image = shape_image("red", "circle", size=2400)
    records = [Record(post_event("p", "a red circle", image), topic="posts", offset=0)]
    handler = BatchHandler(
        Settings(), primary, FakeStore(), FakeTopic(), FakeTopic(), shadow=shadow
    )
    asyncio.run(handler.handle(records))
    # decoded for the primary alone, the 2400 px picture would be reduced to 266 px
    assert min(min(size) for size in shadow_sizes) >= 600
