"""The decisions outbox relay against a real broker and a real Postgres: every decision on the
topic, in order, at least once; a worker SIGKILLed mid-relay loses none."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from tests.support import LEASE, consume, create_worker_topics, insert_items, worker_env
from worker.demo.embedded import create_topics
from worker.messages import validator
from worker.outbox import OUTBOX_LOCK_KEY, Relay
from worker.review.decisions import undo
from worker.review.queue import claim, decide

pytestmark = pytest.mark.integration

SHAPES_BUNDLE = Path(__file__).parent / "data" / "shapes-itm"
DECISIONS = ("confirmed_mismatch", "not_a_mismatch", "escalate")


def make_decisions(engine: sa.Engine, n: int) -> list[int]:
    """`n` items queued and decided by alice, each decision written with its outbox message."""
    ids = insert_items(engine, n)
    for i, item_id in enumerate(ids):
        claim(engine, item_id, "alice", lease_s=LEASE)
        decide(engine, item_id, "alice", DECISIONS[i % 2 + 1])
    return ids


def outbox_ids(engine: sa.Engine, where: str = "true") -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT message_id FROM review_outbox WHERE {where}"))
        return [str(r[0]) for r in rows]


async def relay_all(engine: sa.Engine, bootstrap: str, topic: str) -> int:
    """Relay until the outbox is empty with an acks=all producer; returns the messages sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()

    async def send(key: bytes, value: bytes) -> Any:
        return await producer.send(topic, key=key, value=value)

    try:
        relay = Relay(engine, send, batch=3)
        while await relay.relay_once():
            pass
        return relay.relayed
    finally:
        await producer.stop()


def test_the_relay_publishes_every_decision_in_order(broker: str, engine: sa.Engine) -> None:
    """Decisions and an undo reach the topic once each, valid, keyed by post, in the order
    they were made, and are marked delivered; a second pass sends nothing."""
    topic = "outbox-order-decisions"
    create_topics(broker, {topic: 2})
    first_id = make_decisions(engine, 4)[0]
    undo(engine, first_id, "alice", window_s=60, lease_s=LEASE)
    decide(engine, first_id, "alice", "escalate")
    assert asyncio.run(relay_all(engine, broker, topic)) == 6
    assert outbox_ids(engine, "delivered_at IS NULL") == []
    assert asyncio.run(relay_all(engine, broker, topic)) == 0
    check = validator("moderation-decision.v1")
    messages = [json.loads(v) for v in consume(broker, topic, expect=6)]
    for message in messages:
        check.validate(message)
    assert sorted(m["message_id"] for m in messages) == sorted(outbox_ids(engine))
    first = [(m["type"], m["decision"]) for m in messages if m["item_id"] == first_id]
    assert first == [
        ("decision", "not_a_mismatch"),
        ("undo", "not_a_mismatch"),
        ("decision", "escalate"),
    ]


def test_a_failed_send_leaves_the_batch_undelivered(engine: sa.Engine) -> None:
    """When the broker refuses, nothing is marked delivered, so the next pass sends it again."""
    make_decisions(engine, 2)

    async def refuse(key: bytes, value: bytes) -> Any:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        asyncio.run(Relay(engine, refuse).relay_once())
    assert len(outbox_ids(engine, "delivered_at IS NULL")) == 2


def test_one_relay_works_at_a_time(engine: sa.Engine) -> None:
    """While another relay holds the outbox lock, a relay sends nothing."""
    make_decisions(engine, 1)
    sent: list[bytes] = []

    async def send(key: bytes, value: bytes) -> Any:
        sent.append(value)
        return asyncio.sleep(0)

    with engine.connect() as other:
        other.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": OUTBOX_LOCK_KEY})
        assert asyncio.run(Relay(engine, send).relay_once()) == 0
        other.rollback()
    assert asyncio.run(Relay(engine, send).relay_once()) == 1
    assert len(sent) == 1


def test_a_worker_killed_mid_relay_loses_no_decision(
    broker: str,
    database_url: str,
    engine: sa.Engine,
    worker_process: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGKILL the worker while it relays 2,000 decisions, start another: every decision is on
    the topic at least once, and the repeats are counted."""
    name, total = "outbox-kill", 2000
    create_worker_topics(broker, name)
    topic = f"{name}-decisions"
    create_topics(broker, {topic: 2})
    make_decisions(engine, total)
    env = worker_env(broker, database_url, SHAPES_BUNDLE, name, 0.5, ITMGUARD_DECISIONS_TOPIC=topic)
    first = worker_process(env, tmp_path / "first.log")
    proc = first.start()
    delivered = 0
    deadline = time.monotonic() + 120
    while delivered == 0 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        delivered = total - len(outbox_ids(engine, "delivered_at IS NULL"))
    first.stop(signal.SIGKILL)
    at_kill = total - len(outbox_ids(engine, "delivered_at IS NULL"))
    assert 0 < at_kill < total, f"the kill did not land mid-relay ({at_kill} of {total})"
    second = worker_process(env, tmp_path / "second.log")
    proc = second.start()
    deadline = time.monotonic() + 120
    while outbox_ids(engine, "delivered_at IS NULL") and time.monotonic() < deadline:
        assert proc.poll() is None, second.logs()[-2000:]
        time.sleep(0.2)
    assert outbox_ids(engine, "delivered_at IS NULL") == []
    seen = Counter(json.loads(v)["message_id"] for v in consume(broker, topic, expect=total))
    assert set(seen) == set(outbox_ids(engine))
    duplicates = sum(seen.values()) - len(seen)
    with capsys.disabled():
        print(
            f"\n[outbox kill] {total} decisions; {at_kill} marked delivered when the worker was "
            f"SIGKILLed; after a restart {len(seen)} of {total} on the topic, none missing, "
            f"{duplicates} sent twice"
        )
    assert second.stop() == 0
