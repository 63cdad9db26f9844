"""The Faust adapter: batches post events and hands them to the scoring path.

Everything Faust-specific lives here. The order inside a batch is what makes
delivery safe: score (in an executor, so heartbeats and commits keep running),
write verdicts to Postgres, send flags and dead letters and wait for the
broker to accept them, and only then acknowledge the events. Faust commits
acknowledged offsets only, so a worker killed at any step redelivers the
batch, and the idempotent writes absorb the repeat.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from tempfile import gettempdir
from typing import Any, NoReturn

import faust
import sqlalchemy as sa
import structlog
from aiokafka.errors import KafkaError

from worker.batch import Outcome, Record, image_urls, parse_records, score_parsed
from worker.config import Settings
from worker.errors import BatchAbandoned, BrokerUnavailable
from worker.fetch import ImageFetcher
from worker.metrics import Metrics
from worker.persistence import write_outcomes
from worker.retry import retry_forever
from worker.scoring import Scorer

__all__ = ["BatchHandler", "create_app"]

log = structlog.get_logger(__name__)


def _dumps(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class BatchHandler:
    """Score, persist and publish one batch; returns only once all of it is durable."""

    def __init__(
        self,
        settings: Settings,
        scorer: Scorer,
        engine: sa.Engine,
        flags: faust.TopicT,
        dead_letters: faust.TopicT,
        stopping: Callable[[], bool] = lambda: False,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._scorer = scorer
        self._engine = engine
        self._flags = flags
        self._dead_letters = dead_letters
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="itmguard-batch")
        self.fetcher = ImageFetcher(settings.fetch_limits)
        self._batches = 0
        self._stopping = stopping
        self._stop_seen: float | None = None
        self.metrics = metrics or Metrics()

    def _give_up(self) -> bool:
        """True once the worker has been stopping for longer than the shutdown grace."""
        if not self._stopping():
            return False
        now = time.monotonic()
        if self._stop_seen is None:
            self._stop_seen = now
        return now - self._stop_seen >= self._settings.shutdown_grace_s

    async def handle(self, records: Sequence[Record]) -> list[Outcome]:
        self._batches += 1
        with structlog.contextvars.bound_contextvars(batch=self._batches):
            return await self._handle(records)

    async def _handle(self, records: Sequence[Record]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        parsed = await loop.run_in_executor(self._executor, parse_records, records)
        fetched = await self.fetcher.fetch_all(image_urls(parsed))
        outcomes = await loop.run_in_executor(
            self._executor,
            functools.partial(
                score_parsed, parsed, self._scorer, self._settings.fetch_limits, fetched=fetched
            ),
        )
        scored = loop.time()
        _log_outcomes(outcomes)

        async def write() -> int:
            return await loop.run_in_executor(
                self._executor, write_outcomes, self._engine, outcomes
            )

        await retry_forever(write, what="write_verdicts", give_up=self._give_up,
                            on_retry=self._count_retry)
        await retry_forever(lambda: self._publish(outcomes), what="publish",
                            give_up=self._give_up, on_retry=self._count_retry)
        self.metrics.record_batch(outcomes, score_s=scored - started, total_s=loop.time() - started)
        counts = {"match": 0, "mismatch": 0, "error": 0, "dead_letter": 0}
        for outcome in outcomes:
            if outcome.verdict is not None:
                counts[outcome.verdict.verdict] += 1
            if outcome.dead_letter is not None:
                counts["dead_letter"] += 1
        log.info(
            "batch_done",
            size=len(records),
            score_ms=round((scored - started) * 1000, 1),
            total_ms=round((loop.time() - started) * 1000, 1),
            **counts,
        )
        return outcomes

    def _count_retry(self, step: str) -> None:
        self.metrics.retries.labels(step).inc()

    async def _publish(self, outcomes: Sequence[Outcome]) -> None:
        """Send every flag and dead letter, and wait until the broker has them all."""
        try:
            pending = []
            for outcome in outcomes:
                verdict = outcome.verdict
                key = verdict.post_id.encode() if verdict and verdict.post_id else None
                if verdict is not None and verdict.verdict == "mismatch":
                    pending.append(await self._flags.send(key=key, value=_dumps(verdict.to_message())))
                if outcome.dead_letter is not None:
                    pending.append(
                        await self._dead_letters.send(key=key, value=_dumps(outcome.dead_letter))
                    )
            await asyncio.gather(*pending)
        except (KafkaError, asyncio.TimeoutError) as exc:
            raise BrokerUnavailable(f"broker did not accept a message: {type(exc).__name__}") from exc


EXIT_ABANDONED = 75
"""Exit status after abandoning a batch at shutdown (EX_TEMPFAIL: run it again)."""


def _abandon(size: int, exc: BatchAbandoned) -> NoReturn:
    """Leave at once: Faust would wait forever for the held events, or commit them."""
    log.error("batch_abandoned", size=size, reason=str(exc), exit_status=EXIT_ABANDONED)
    logging.shutdown()
    os._exit(EXIT_ABANDONED)


def _log_outcomes(outcomes: Sequence[Outcome]) -> None:
    """Rejections at info (they need a look), verdicts at debug; ids and codes only."""
    for outcome in outcomes:
        verdict, where = outcome.verdict, outcome.record
        if outcome.dead_letter is not None:
            log.info("post_rejected", post_id=verdict.post_id if verdict else None,
                     code=outcome.dead_letter["reason"], partition=where.partition,
                     offset=where.offset)
        elif verdict is not None:
            log.debug("post_scored", post_id=verdict.post_id, score=verdict.score,
                      verdict=verdict.verdict)


def create_app(
    settings: Settings, scorer: Scorer, engine: sa.Engine, metrics: Metrics | None = None
) -> faust.App:
    """The Faust app with its one agent, configured from `settings`."""
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap],
        value_serializer="raw",
        key_serializer="raw",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        datadir=Path(gettempdir()) / f"itmguard-{settings.group_id}",
    )
    posts = app.topic(settings.posts_topic, value_type=bytes)
    handler = BatchHandler(
        settings,
        scorer,
        engine,
        flags=app.topic(settings.flags_topic),
        dead_letters=app.topic(settings.dlq_topic),
        stopping=lambda: bool(app.should_stop),
        metrics=metrics,
    )
    handler.metrics.model_info.labels(scorer.model_id, scorer.provider).set(1)
    within = settings.max_wait_ms / 1000

    @app.on_before_shutdown.connect
    async def close_fetcher(app: faust.App, **kwargs: Any) -> None:
        await handler.fetcher.close()

    @app.agent(posts, name="score_posts")
    async def score_posts(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(settings.max_batch, within=within):
            # take_events acknowledges a batch in a `finally`, even when this body is
            # cancelled mid-write; an extra reference keeps those offsets uncommitted
            # until the batch is durable and released below.
            for event in events:
                event.message.incref()
            records = [
                Record(
                    payload=event.value,
                    topic=event.message.topic,
                    partition=event.message.partition,
                    offset=event.message.offset,
                    timestamp=datetime.fromtimestamp(event.message.timestamp, UTC),
                )
                for event in events
            ]
            try:
                await handler.handle(records)
            except BatchAbandoned as exc:
                _abandon(len(records), exc)
            for event in events:
                await stream.ack(event)

    return app
