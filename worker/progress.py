"""Where the batches in flight are: which step, since when, how often that step has failed.

The worker has up to one batch in each stage of its pipeline: `prepare`
(parse, fetch, decode), `score` (the model) and delivery (`write_verdicts`,
then `publish`). The batch handler marks each step on the event loop; the
health probes read the marks from their own threads, to tell a batch that is
waiting out an outage (not ready) from one that is stuck (not live). The marks
are one immutable mapping, replaced whole, so a reader sees the old steps or
the new ones, never a mix of the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

__all__ = ["DELIVERY", "DELIVERY_STEPS", "BatchProgress", "Step", "stage_of"]

DELIVERY_STEPS = ("write_verdicts", "publish")
"""Steps that wait on Postgres or Kafka, and are retried until they succeed."""

DELIVERY = "delivery"
"""The stage both delivery steps belong to: one batch at a time is written and published."""


@dataclass(frozen=True)
class Step:
    """One step of a batch in flight: `prepare`, `score`, `write_verdicts` or `publish`."""

    name: str
    since: float
    failures: int = 0


def stage_of(step: str) -> str:
    """The pipeline stage `step` belongs to."""
    return DELIVERY if step in DELIVERY_STEPS else step


class BatchProgress:
    """The step of the batch in each stage, by stage name; a stage with no batch is absent."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.steps: Mapping[str, Step] = MappingProxyType({})

    def enter(self, name: str) -> None:
        """A batch starts step `name`."""
        self._set(stage_of(name), Step(name, self.clock()))

    def failed(self, name: str) -> None:
        """An attempt at step `name` failed and will be retried."""
        step = self.steps.get(stage_of(name))
        if step is None or step.name != name:
            step = Step(name, self.clock())
        self._set(stage_of(name), replace(step, failures=step.failures + 1))

    def leave(self, name: str) -> None:
        """The batch in the stage of step `name` has left it (done, failed or abandoned)."""
        self.steps = MappingProxyType(
            {stage: s for stage, s in self.steps.items() if stage != stage_of(name)}
        )

    def _set(self, stage: str, step: Step) -> None:
        self.steps = MappingProxyType({**self.steps, stage: step})
