"""retry_forever: waits out infrastructure failures, never swallows anything else."""

from __future__ import annotations

import asyncio

import pytest

from worker.errors import BatchAbandoned, BrokerUnavailable, InvalidEvent
from worker.retry import Backoff, retry_forever

FAST = Backoff(base=0.001, cap=0.004)


def _failing(times: int, error: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    async def step() -> str:
        calls.append(len(calls))
        if len(calls) <= times:
            raise error
        return "done"

    return calls, step


def test_backoff_doubles_up_to_its_cap() -> None:
    """Delays go base, 2×base, 4×base … and stop growing at the cap."""
    backoff = Backoff(base=0.5, cap=3.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_infra_errors_are_retried_until_the_step_succeeds() -> None:
    """Three broker failures, then success: four calls, three retries reported."""
    calls, step = _failing(3, BrokerUnavailable("down"))
    retried: list[str] = []
    result = asyncio.run(retry_forever(step, what="publish", backoff=FAST, on_retry=retried.append))
    assert result == "done"
    assert len(calls) == 4
    assert retried == ["publish"] * 3


def test_other_errors_are_not_retried() -> None:
    """An error that is not the infrastructure's propagates at once, after one call."""
    calls, step = _failing(1, InvalidEvent("caption: fails"))
    with pytest.raises(InvalidEvent):
        asyncio.run(retry_forever(step, what="publish", backoff=FAST))
    assert len(calls) == 1


def test_giving_up_while_failing_abandons_the_batch() -> None:
    """When the worker is stopping and the step still fails, BatchAbandoned names the step."""
    calls, step = _failing(100, BrokerUnavailable("down"))
    with pytest.raises(BatchAbandoned, match="publish still failing at shutdown: down"):
        asyncio.run(retry_forever(step, what="publish", backoff=FAST, give_up=lambda: True))
    assert len(calls) == 1
