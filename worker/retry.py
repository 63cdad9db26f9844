"""Retry an infrastructure step until it succeeds, backing off.

A batch whose verdicts cannot be written or whose flags cannot be sent must
not be acknowledged, and must not be dropped: the worker waits for Postgres or
Kafka to come back, saying so in the logs, rather than raise out of the agent
(which would acknowledge the batch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from worker.errors import BatchAbandoned, InfraError

__all__ = ["Backoff", "retry_forever"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Backoff:
    """Exponential delays: base, 2×base, … capped at `cap` seconds."""

    def __init__(self, base: float = 0.5, cap: float = 10.0) -> None:
        self.base = base
        self.cap = cap

    def delay(self, attempt: int) -> float:
        return float(min(self.cap, self.base * 2 ** (attempt - 1)))


async def retry_forever(
    step: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff | None = None,
    give_up: Callable[[], bool] = lambda: False,
    on_retry: Callable[[str], None] = lambda step: None,
) -> T:
    """Await `step()` until it returns, sleeping between attempts that raise `InfraError`.

    Raises:
        BatchAbandoned: `give_up()` turned true (the worker is stopping) while `step`
            still failed; the caller must not acknowledge the batch.
    """
    backoff = backoff or Backoff()
    attempt = 0
    while True:
        try:
            result = await step()
        except InfraError as exc:
            if give_up():
                raise BatchAbandoned(f"{what} still failing at shutdown: {exc}") from exc
            attempt += 1
            on_retry(what)
            delay = backoff.delay(attempt)
            log.warning("retrying", step=what, attempt=attempt, delay_s=delay, error=str(exc))
            waited = 0.0
            while waited < delay and not give_up():  # a shutdown cuts the wait short
                await asyncio.sleep(min(1.0, delay - waited))
                waited += 1.0
            continue
        if attempt:
            log.info("recovered", step=what, attempts=attempt + 1)
        return result
