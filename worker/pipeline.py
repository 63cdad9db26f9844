"""Batches in flight at once, one per stage, acknowledged in the order they arrived.

The model is the expensive part of every post; the CPU work before it (parse,
fetch, decode) and the I/O after it (write, publish) would leave it idle if
each batch went through all of them alone. The pipeline decodes batch N+1
while batch N is in inference and batch N-1 is written and published. Each
stage holds one batch at a time and batches pass every stage in arrival order,
so `on_durable` (where the caller acknowledges) runs in arrival order, and
only once its batch is durable. A batch that fails takes every batch after it
down with it, unacknowledged: a later batch is never acknowledged past an
earlier one that was not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from worker.errors import BatchAbandoned
from worker.handler import BatchHandler
from worker.verdicts import Record

__all__ = ["STAGES", "Pipeline", "PipelineBroken"]

log = structlog.get_logger(__name__)

STAGES = 3
"""prepare, score and deliver: at most this many batches are in flight."""

Abandon = Callable[[int, BatchAbandoned], None]
"""Called with the batch's size when a batch is abandoned at shutdown; it must not return
normally into the pipeline (the Faust adapter ends the process)."""


class PipelineBroken(RuntimeError):
    """A batch failed; it and every batch after it stay unacknowledged."""


class _Upstream(Exception):
    """The batch before this one failed, so this one stops too."""


@dataclass
class _Batch:
    previous: _Batch | None
    scored: asyncio.Event = field(default_factory=asyncio.Event)
    delivered: asyncio.Event = field(default_factory=asyncio.Event)
    failure: BaseException | None = None

    async def passed(self, stage: asyncio.Event) -> None:
        """Wait until this batch has passed `stage`; raise if it failed instead."""
        await stage.wait()
        if self.failure is not None:
            raise _Upstream from self.failure

    def fail(self, exc: BaseException) -> None:
        """Record why this batch stopped, and wake the batch after it so it stops too."""
        self.failure = exc
        self.scored.set()
        self.delivered.set()


class Pipeline:
    """Feeds batches to `handler`'s three stages, one batch per stage at a time."""

    def __init__(self, handler: BatchHandler, on_abandoned: Abandon, stages: int = STAGES) -> None:
        self._handler = handler
        self._on_abandoned = on_abandoned
        self._room = asyncio.Semaphore(stages)
        self._last: _Batch | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(
        self, records: Sequence[Record], on_durable: Callable[[], Awaitable[None]]
    ) -> None:
        """Start `records` through the stages; returns once another batch may start.

        Raises:
            PipelineBroken: an earlier batch failed; nothing from it on was acknowledged.
        """
        await self._room.acquire()
        self._check()
        batch = _Batch(self._last)
        self._last = batch
        task = asyncio.create_task(self._run(batch, records, on_durable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every batch submitted is durable and acknowledged.

        Raises:
            PipelineBroken: a batch failed.
        """
        if self._last is not None:
            await self._last.delivered.wait()
        self._check()

    def cancel(self) -> None:
        """Stop every batch in flight where it is; none of them is acknowledged after this."""
        for task in list(self._tasks):
            task.cancel()

    def _check(self) -> None:
        last = self._last
        if last is not None and last.failure is not None:
            raise PipelineBroken(f"a batch failed: {last.failure!r}") from last.failure

    async def _run(
        self,
        batch: _Batch,
        records: Sequence[Record],
        on_durable: Callable[[], Awaitable[None]],
    ) -> None:
        previous = batch.previous
        try:
            decoded = await self._handler.prepare(records)
            if previous is not None:
                await previous.passed(previous.scored)
            judged = await self._handler.infer(decoded)
            batch.scored.set()
            if previous is not None:
                await previous.passed(previous.delivered)
            await self._handler.deliver(judged)
            await on_durable()
            batch.delivered.set()
        except BatchAbandoned as exc:
            batch.fail(exc)
            self._on_abandoned(len(records), exc)
        except asyncio.CancelledError as exc:
            batch.fail(exc)
            raise
        except _Upstream:
            assert previous is not None and previous.failure is not None
            batch.fail(previous.failure)
        except Exception as exc:
            log.exception("batch_failed", size=len(records))
            batch.fail(exc)
        finally:
            batch.previous = None  # batches would otherwise chain back to the first
            self._room.release()
