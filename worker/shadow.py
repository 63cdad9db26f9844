"""A shadow model: a candidate scored on live traffic beside the model in service.

Teams switching models want the candidate's verdicts on the same posts before
it flags anything (`itmguard compare` reads them). The shadow scores every
batch the primary scores, on a thread of its own, from the same decoded
pictures; its verdicts are stored with `role = 'shadow'` and never flagged,
queued for review or dead-lettered. It may never fail or hold up the primary:
a shadow that cannot load is left out at start, one that raises gives no
verdicts for that batch (one whose model gives no probability for some posts
stores error verdicts for them), one still scoring `wait_s` after the primary is done
is left behind (and skips batches until it is free again). Each of those is
logged and counted in `itmguard_shadow_failures_total{reason}`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import structlog

from worker.errors import InferenceFailed, ItmguardError
from worker.judge import Prepared, score_prepared
from worker.metrics import Metrics
from worker.scoring import Scorer
from worker.verdicts import Outcome, last_outcomes

__all__ = ["Shadow", "open_shadow"]

log = structlog.get_logger(__name__)


class Shadow:
    """Scores prepared batches with `scorer` for storage only, within a bounded wait."""

    def __init__(self, scorer: Scorer, wait_s: float, metrics: Metrics) -> None:
        self.scorer = scorer
        self.wait_s = wait_s
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="itmguard-shadow")
        self._running: Future[list[Outcome]] | None = None

    def start(self, prepared: Prepared) -> Future[list[Outcome]] | None:
        """Start scoring `prepared`, unless the shadow is still busy with an earlier batch."""
        if self._running is not None and not self._running.done():
            self._failed("busy")
            return None
        self._running = self._pool.submit(self._score, prepared)
        return self._running

    async def outcomes(self, started: Future[list[Outcome]] | None) -> list[Outcome]:
        """The shadow's outcomes for a batch whose primary scores are in: waits at most
        `wait_s` more, and gives none rather than fail or wait longer."""
        if started is None:
            return []
        try:
            return await asyncio.wait_for(asyncio.wrap_future(started), self.wait_s)
        except TimeoutError:
            self._failed("late", wait_s=self.wait_s)
        except Exception as exc:  # noqa: BLE001 - nothing the shadow does may reach the primary
            self._failed("error", error=f"{type(exc).__name__}: {exc}"[:200])
        return []

    def _score(self, prepared: Prepared) -> list[Outcome]:
        """One outcome per post, its verdict marked as the shadow's; no review item, flag or
        dead letter comes of it."""
        scored = score_prepared(prepared, self.scorer, fitted=False, thumbnails=False)
        final = last_outcomes(scored)
        verdicts = [replace(o.verdict, role="shadow") for o in final if o.verdict is not None]
        failed = sum(v.error_code == InferenceFailed.code for v in verdicts)
        if failed:
            self._failed("inference", posts=failed)
        return [
            Outcome(o.record, verdict, None, None)
            for o, verdict in zip(
                (o for o in final if o.verdict is not None), verdicts, strict=True
            )
        ]

    def _failed(self, reason: str, **detail: object) -> None:
        self._metrics.shadow_failures.labels(reason).inc()
        log.warning("shadow_skipped", reason=reason, model_id=self.scorer.model_id, **detail)


def open_shadow(
    load: Callable[[], Scorer], primary: Scorer, wait_s: float, metrics: Metrics
) -> Shadow | None:
    """The shadow `load` opens and warms up, or None when it cannot: a bad shadow bundle
    is logged and counted, and the worker starts with its primary alone."""
    try:
        scorer = load()
    except ItmguardError as exc:
        metrics.shadow_failures.labels("load").inc()
        log.error("shadow_unavailable", error=str(exc))
        return None
    if scorer.model_id == primary.model_id:
        metrics.shadow_failures.labels("load").inc()
        log.error(
            "shadow_unavailable",
            error=f"the shadow is the primary's model ({scorer.model_id}): give it another "
            "name or version, so their verdicts stay apart",
        )
        return None
    metrics.model_info.labels(scorer.model_id, scorer.provider, "shadow").set(1)
    return Shadow(scorer, wait_s, metrics)
