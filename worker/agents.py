"""The Faust adapter: batches post events and hands them to the batch handler.

Everything Faust-specific lives here; swapping Faust for another consumer
means replacing this file. The order inside a batch is what makes delivery
safe: the handler scores (in executors, so heartbeats and commits keep
running), writes verdicts to Postgres, sends flags and dead letters and waits
for the broker to accept them; only then are the events acknowledged. Up to
three batches are in flight at once, one per stage (`worker.pipeline`), and
they are acknowledged in the order they arrived. Faust commits acknowledged
offsets only, so a worker killed at any step redelivers every batch not yet
durable, and the idempotent writes absorb the repeat.

The adapter also tells `worker.health` what only Faust knows: that the event
loop runs, and when the consumer's partitions are assigned or revoked.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from tempfile import gettempdir
from typing import Any, NoReturn

import faust
import sqlalchemy as sa
import structlog
from faust.types.auth import CredentialsT

from worker.config import Settings
from worker.errors import BatchAbandoned
from worker.handler import BatchHandler
from worker.health import Health
from worker.kafka_security import KafkaSecurity, ssl_context
from worker.metrics import Metrics
from worker.outbox import Relay
from worker.persistence import write_outcomes
from worker.pipeline import Pipeline
from worker.scoring import Scorer
from worker.shadow import Shadow
from worker.verdicts import Record

__all__ = ["EXIT_ABANDONED", "broker_credentials", "create_app"]

log = structlog.get_logger(__name__)


EXIT_ABANDONED = 75
"""Exit status after abandoning a batch at shutdown (EX_TEMPFAIL: run it again)."""


def _abandon(size: int, exc: BatchAbandoned) -> NoReturn:
    """Leave at once: Faust would wait forever for the held events, or commit them."""
    log.error("batch_abandoned", size=size, reason=str(exc), exit_status=EXIT_ABANDONED)
    logging.shutdown()
    os._exit(EXIT_ABANDONED)


def _record(event: faust.EventT[bytes]) -> Record:
    message = event.message
    return Record(
        payload=event.value,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp=datetime.fromtimestamp(message.timestamp, UTC),
    )


async def _ack_all(stream: faust.StreamT[bytes], events: Sequence[faust.EventT[bytes]]) -> None:
    for event in events:
        await stream.ack(event)


def broker_credentials(security: KafkaSecurity) -> CredentialsT | None:
    """Faust's credentials for `security`: SASL (over TLS for SASL_SSL), TLS alone, or None
    for PLAINTEXT.

    Raises:
        ConfigError: the settings contradict each other, or a TLS file cannot be used.
    """
    context = ssl_context(security)
    if security.sasl:
        return faust.SASLCredentials(
            username=security.sasl_username,
            password=security.sasl_password,
            mechanism=security.sasl_mechanism,
            ssl_context=context,
        )
    return None if context is None else faust.SSLCredentials(context)


def create_app(
    settings: Settings,
    scorer: Scorer,
    engine: sa.Engine,
    metrics: Metrics | None = None,
    health: Health | None = None,
    shadow: Shadow | None = None,
) -> faust.App:
    """The Faust app with its one agent, configured from `settings`; it keeps `health` told.

    Raises:
        ConfigError: the Kafka security settings cannot be used.
    """
    health = health or Health()
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap],
        broker_credentials=broker_credentials(settings.kafka_security),
        consumer_group_instance_id=settings.group_instance_id,
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
        functools.partial(write_outcomes, engine),
        flags=app.topic(settings.flags_topic),
        dead_letters=app.topic(settings.dlq_topic),
        stopping=lambda: bool(app.should_stop),
        metrics=metrics,
        progress=health.progress,
        shadow=shadow,
    )
    handler.metrics.model_info.labels(scorer.model_id, scorer.provider, "primary").set(1)
    within = settings.max_wait_ms / 1000
    decisions = app.topic(settings.decisions_topic)
    relay = Relay(engine, lambda key, value: decisions.send(key=key, value=value))

    @app.task  # type: ignore[untyped-decorator]
    async def relay_decisions() -> None:
        # moderators' decisions, from the review outbox to the decisions topic
        await relay.run()

    # mode's signal types accept no coroutine function that mypy can match
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_fetcher(_app: faust.App, **_: Any) -> None:
        await handler.close()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def revoked(_app: faust.App, _revoked: set[Any], **_: Any) -> None:
        health.partitions_revoked()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def assigned(_app: faust.App, partitions: set[Any], **_: Any) -> None:
        health.partitions_assigned(len(partitions))

    @app.agent(posts, name="score_posts")
    async def score_posts(stream: faust.StreamT[bytes]) -> None:
        # the agent starts with the app, before the group join: the loop /livez asks
        health.loop_started(asyncio.get_running_loop())
        # faust's StreamT declares `take` but not `take_events`, which Stream has
        batches = stream.take_events(settings.max_batch, within=within)  # type: ignore[attr-defined]
        pipeline = Pipeline(handler, on_abandoned=_abandon)
        try:
            async for events in batches:
                # take_events acknowledges a batch in a `finally` once the next one is
                # taken; an extra reference keeps its offsets uncommitted until the batch
                # is durable and released by `on_durable`, in arrival order.
                for event in events:
                    event.message.incref()
                await pipeline.submit(
                    [_record(event) for event in events],
                    on_durable=functools.partial(_ack_all, stream, events),
                )
        finally:
            pipeline.cancel()

    return app
