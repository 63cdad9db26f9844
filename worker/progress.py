"""Where the batch in flight is: which step, since when, how often that step has failed.

The batch handler marks each step on the event loop; the health probes read
the mark from their own threads, to tell a batch that is waiting out an outage
(not ready) from one that is stuck (not live). The mark is one immutable
value, replaced whole, so a reader sees the old step or the new one, never a
mix of the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

__all__ = ["DELIVERY_STEPS", "BatchProgress", "Step"]

DELIVERY_STEPS = ("write_verdicts", "publish")
"""Steps that wait on Postgres or Kafka, and are retried until they succeed."""


@dataclass(frozen=True)
class Step:
    """One step of the batch in flight: `score`, `write_verdicts` or `publish`."""

    name: str
    since: float
    failures: int = 0


class BatchProgress:
    """The step of the batch in flight, or None between batches."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.step: Step | None = None

    def enter(self, name: str) -> None:
        """The batch starts step `name`."""
        self.step = Step(name, self.clock())

    def failed(self, name: str) -> None:
        """An attempt at step `name` failed and will be retried."""
        step = self.step
        if step is None or step.name != name:
            step = Step(name, self.clock())
        self.step = replace(step, failures=step.failures + 1)

    def leave(self) -> None:
        """The batch is done (durable, or abandoned)."""
        self.step = None
