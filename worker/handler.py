"""One batch, start to durable: judge it, write it, publish it, count it.

The batch handler knows nothing of Faust or SQL: it gets raw records, a
`store` that makes outcomes durable (`worker.persistence.write_outcomes` on
an engine) and two topics it can send to, so any consumer (the Faust agent in
`worker.agents`, a test with fake topics and a fake store) can drive it. It
returns only once the store has committed the verdicts and the broker has
accepted every flag and dead letter; the caller acknowledges the records after
that, and not before.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aiokafka.errors import KafkaError

from worker.config import Settings
from worker.cores import usable_cores
from worker.errors import BrokerUnavailable
from worker.fetch import ImageFetcher
from worker.judge import Prepared, add_thumbnails, prepare, score_prepared
from worker.messages import encode, verdict_message
from worker.metrics import Metrics
from worker.progress import BatchProgress
from worker.retry import retry_forever
from worker.scoring import Scorer
from worker.shadow import Shadow
from worker.verdicts import Outcome, Record, last_outcomes

__all__ = ["BatchHandler", "Decoded", "Judged", "Store", "Topic"]

log = structlog.get_logger(__name__)


class Topic(Protocol):
    """Where messages go: `send` returns once the message is queued, and its result
    (awaited) once the broker has it."""

    async def send(self, *, key: bytes | None, value: bytes) -> Awaitable[Any]: ...


Store = Callable[[Sequence[Outcome]], int]
"""Writes one outcome per post durably, in one transaction, and returns the rows written;
raises an `InfraError` (retried) when it could not. Called from the handler's executor thread."""


@dataclass(frozen=True)
class Decoded:
    """A batch after `prepare`: its records, their decoded pictures, when it arrived."""

    records: Sequence[Record]
    prepared: Prepared
    received: float


@dataclass(frozen=True)
class Judged:
    """A batch after the model: its outcomes, and when it arrived and was scored."""

    records: Sequence[Record]
    prepared: Prepared
    outcomes: list[Outcome]
    received: float
    score_s: float
    shadow: list[Outcome] = field(default_factory=list)
    """The shadow model's outcomes, one per post, for storage only."""


class BatchHandler:
    """Score, persist and publish batches; a batch is acknowledged only once all of it is
    durable.

    A batch passes three stages, each with threads of its own: `prepare`
    (parse, fetch, decode, on a pool sized to the cores), `infer` (the model,
    on one thread) and `deliver` (write, then publish, on one thread for the
    database). `handle` runs them one after another; `worker.pipeline` runs
    each stage on a different batch at once, so the model never waits on the
    CPU work or the I/O around it.

    A shadow model (`worker.shadow`), when set, scores each batch beside the
    primary; its verdicts are written with the batch and nothing else comes of
    them.

    A post that appears more than once in a batch is decided by its last
    record (`last_outcomes`): that one outcome gives its verdict row, its
    review item, its flag and its count. Every record that could not be
    scored still gets its dead letter. Each step is marked in `progress`, so
    the health probes tell a stuck batch from one waiting out an outage.
    """

    def __init__(
        self,
        settings: Settings,
        scorer: Scorer,
        store: Store,
        flags: Topic,
        dead_letters: Topic,
        stopping: Callable[[], bool] = lambda: False,
        metrics: Metrics | None = None,
        progress: BatchProgress | None = None,
        shadow: Shadow | None = None,
    ) -> None:
        self._settings = settings
        self._scorer = scorer
        self._store = store
        self._flags = flags
        self._dead_letters = dead_letters
        self._decoders = ThreadPoolExecutor(
            max_workers=settings.decode_threads or usable_cores(),
            thread_name_prefix="itmguard-decode",
        )
        self._model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="itmguard-model")
        self._database = ThreadPoolExecutor(max_workers=1, thread_name_prefix="itmguard-db")
        self.fetcher = ImageFetcher(settings.fetch_limits)
        self._batches = 0
        self._stopping = stopping
        self._stop_seen: float | None = None
        self.metrics = metrics or Metrics()
        self.progress = progress or BatchProgress()
        self._shadow = shadow
        # pictures are decoded for the larger input of the primary and the shadow, so that
        # neither model gets one reduced below its input; at full size if either asks
        sizes = [scorer.input_size, *([shadow.scorer.input_size] if shadow else [])]
        self._input_size = (
            None
            if any(size is None for size in sizes)
            else (max(s[0] for s in sizes if s), max(s[1] for s in sizes if s))
        )

    def _give_up(self) -> bool:
        """True once the worker has been stopping for longer than the shutdown grace."""
        if not self._stopping():
            return False
        now = time.monotonic()
        if self._stop_seen is None:
            self._stop_seen = now
        return now - self._stop_seen >= self._settings.shutdown_grace_s

    async def handle(self, records: Sequence[Record]) -> list[Outcome]:
        """Judge `records` and make the outcome durable; returns one outcome per record.

        Raises:
            BatchAbandoned: the worker is stopping and Postgres or the broker stayed
                unreachable past the shutdown grace; nothing may be acknowledged.
        """
        judged = await self.infer(await self.prepare(records))
        await self.deliver(judged)
        return judged.outcomes

    async def prepare(self, records: Sequence[Record]) -> Decoded:
        """Parse, fetch and decode `records`, on the decode pool."""
        received = time.monotonic()
        self.progress.enter("prepare")
        try:
            prepared = await prepare(
                records,
                self.fetcher,
                self._settings.fetch_limits,
                input_size=self._input_size,
                fit=self._scorer.fit,
                executor=self._decoders,
            )
        finally:
            self.progress.leave("prepare")
        return Decoded(records, prepared, received)

    async def infer(self, batch: Decoded) -> Judged:
        """Score a prepared batch in one model call, on the model's thread, and with the shadow
        model beside it when there is one."""
        loop = asyncio.get_running_loop()
        self.progress.enter("score")
        try:
            shadowing = self._shadow.start(batch.prepared) if self._shadow else None
            score = functools.partial(
                score_prepared, batch.prepared, self._scorer, thumbnails=False
            )
            outcomes = await loop.run_in_executor(self._model, score)
            score_s = time.monotonic() - batch.received
            shadow = await self._shadow.outcomes(shadowing) if self._shadow else []
        finally:
            self.progress.leave("score")
        return Judged(batch.records, batch.prepared, outcomes, batch.received, score_s, shadow)

    async def deliver(self, judged: Judged) -> None:
        """Write the batch's verdicts, then publish its flags and dead letters; returns once
        Postgres has committed and the broker has accepted everything.

        Raises:
            BatchAbandoned: as `handle`.
        """
        self._batches += 1
        with structlog.contextvars.bound_contextvars(batch=self._batches):
            try:
                await self._deliver(judged)
            finally:
                self.progress.leave("publish")

    async def _deliver(self, judged: Judged) -> None:
        loop = asyncio.get_running_loop()
        # review thumbnails are made here, on the decode pool, not on the model's thread
        outcomes = await add_thumbnails(judged.outcomes, judged.prepared, self._decoders)
        shadow = judged.shadow
        final = last_outcomes(outcomes)
        _log_outcomes(outcomes)

        async def write() -> int:
            return await loop.run_in_executor(self._database, self._store, [*final, *shadow])

        self.progress.enter("write_verdicts")
        await retry_forever(
            write, what="write_verdicts", give_up=self._give_up, on_retry=self._count_retry
        )
        self.progress.enter("publish")
        await retry_forever(
            lambda: self._publish(outcomes, final),
            what="publish",
            give_up=self._give_up,
            on_retry=self._count_retry,
        )
        verdicts = [o.verdict for o in final if o.verdict is not None]
        shadow_verdicts = [o.verdict for o in shadow if o.verdict is not None]
        reasons = [str(o.dead_letter["reason"]) for o in outcomes if o.dead_letter is not None]
        total_s = time.monotonic() - judged.received
        self.metrics.record_batch(
            size=len(judged.records),
            verdicts=[*verdicts, *shadow_verdicts],
            dead_letter_reasons=reasons,
            score_s=judged.score_s,
            total_s=total_s,
        )
        counts = {"match": 0, "mismatch": 0, "error": 0}
        for verdict in verdicts:
            counts[verdict.verdict] += 1
        log.info(
            "batch_done",
            size=len(judged.records),
            superseded=sum(o.verdict is not None for o in outcomes) - len(final),
            dead_letter=len(reasons),
            shadow=len(shadow_verdicts),
            score_ms=round(judged.score_s * 1000, 1),
            total_ms=round(total_s * 1000, 1),
            **counts,
        )

    def _count_retry(self, step: str) -> None:
        self.metrics.retries.labels(step).inc()
        self.progress.failed(step)

    async def _publish(self, outcomes: Sequence[Outcome], final: Sequence[Outcome]) -> None:
        """Send the flags of `final` and every record's dead letter; wait until the broker
        has them all."""
        try:
            pending = []
            for outcome in final:
                verdict = outcome.verdict
                if verdict is not None and verdict.verdict == "mismatch":
                    key = verdict.post_id.encode() if verdict.post_id else None
                    message = encode(verdict_message(verdict, outcome.explanation))
                    pending.append(await self._flags.send(key=key, value=message))
            for outcome in outcomes:
                if outcome.dead_letter is not None:
                    post_id = outcome.dead_letter["post_id"]
                    key = post_id.encode() if post_id else None
                    message = encode(outcome.dead_letter)
                    pending.append(await self._dead_letters.send(key=key, value=message))
            await asyncio.gather(*pending)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerUnavailable(
                f"broker did not accept a message: {type(exc).__name__}"
            ) from exc

    async def close(self) -> None:
        """Close the image fetcher's connections; the executor's thread ends with the process."""
        await self.fetcher.close()


def _log_outcomes(outcomes: Sequence[Outcome]) -> None:
    """Rejections at info (they need a look), verdicts at debug; ids and codes only."""
    for outcome in outcomes:
        verdict, where = outcome.verdict, outcome.record
        if outcome.dead_letter is not None:
            log.info(
                "post_rejected",
                post_id=verdict.post_id if verdict else None,
                code=outcome.dead_letter["reason"],
                partition=where.partition,
                offset=where.offset,
            )
        elif verdict is not None:
            log.debug(
                "post_scored", post_id=verdict.post_id, score=verdict.score, verdict=verdict.verdict
            )
