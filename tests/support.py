"""Real databases and topics for the tests: a fresh Postgres database per test, reading a
topic back, waiting for verdict rows, a test worker's environment, review items put
straight into the queue.

Generated inputs and fakes that benchmarks need too live in `worker.testing`."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer

from worker.demo.embedded import create_topics
from worker.persistence import write_outcomes
from worker.review.items import history
from worker.review.queue import claim, decide
from worker.verdicts import Outcome, Record, ReviewContent, Verdict, VerdictKind
from worker.verdicts import decide as verdict_rule

ADMIN_DATABASE_URL = os.environ.get(
    "ITMGUARD_TEST_ADMIN_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database on the test Postgres; dropped afterwards. Yields its URL."""
    admin = sa.create_engine(ADMIN_DATABASE_URL, isolation_level="AUTOCOMMIT")
    name = f"itmguard_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        raise RuntimeError(
            f"the integration tests need Postgres at {ADMIN_DATABASE_URL} (set "
            "ITMGUARD_TEST_ADMIN_DATABASE_URL to another server); start the local one with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
        ) from exc
    url = sa.engine.make_url(ADMIN_DATABASE_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def consume(bootstrap: str, topic: str, *, expect: int, timeout: float = 60.0) -> list[bytes]:
    """Read `topic` from the start until `expect` messages arrived or `timeout` passed."""

    async def run() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            while len(values) < expect and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    values.extend(r.value for r in records)
            # a short extra read catches messages beyond the expected count
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                values.extend(r.value for r in records)
        finally:
            await consumer.stop()
        return values

    return asyncio.run(run())


def count_rows(url: str, where: str = "true") -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(sa.text(f"SELECT count(*) FROM verdicts WHERE {where}")).scalar_one()
            )
    finally:
        engine.dispose()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` until it holds; returns the seconds waited, or fails naming `what`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(0.1)
    return time.monotonic() - start


def wait_for_rows(
    url: str, n: int, timeout: float, *, proc: subprocess.Popen[bytes] | None = None
) -> float:
    """Poll until `verdicts` holds `n` rows; returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if count_rows(url) >= n:
            return time.monotonic() - start
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode} before {n} verdicts")
        time.sleep(0.5)
    raise AssertionError(f"only {count_rows(url)} of {n} verdicts after {timeout}s")


def worker_env(
    broker: str, database_url: str, bundle: Path, name: str, threshold: float, **extra: str
) -> dict[str, str]:
    """Environment for a test worker: its own topics and group, fast batches and group joins."""
    return {
        "ITMGUARD_KAFKA_BOOTSTRAP": broker,
        "ITMGUARD_DATABASE_URL": database_url,
        "ITMGUARD_BUNDLE": str(bundle),
        "ITMGUARD_POSTS_TOPIC": f"{name}-posts",
        "ITMGUARD_FLAGS_TOPIC": f"{name}-flags",
        "ITMGUARD_DLQ_TOPIC": f"{name}-dlq",
        "ITMGUARD_GROUP_ID": f"{name}-group",
        "ITMGUARD_MAX_BATCH": "32",
        "ITMGUARD_MAX_WAIT_MS": "100",
        "ITMGUARD_THRESHOLD": repr(threshold),
        "ITMGUARD_PROVIDERS": "cpu",
        "ITMGUARD_SESSION_TIMEOUT_S": "10",
        "ITMGUARD_HEARTBEAT_S": "1",
        "ITMGUARD_METRICS_PORT": "0",
        **extra,
    }


def create_worker_topics(broker: str, name: str, partitions: int = 4) -> None:
    create_topics(broker, {f"{name}-posts": partitions, f"{name}-flags": 2, f"{name}-dlq": 1})


LEASE = 300.0
"""A review lease long enough that it never lapses during a test unless the test says so."""


def insert_items(
    engine: sa.Engine, n: int, *, seed: int = 0, prefix: str = "p", model_id: str = "m@1"
) -> list[int]:
    """`n` pending review items inserted directly, with random scores and distinct ages."""
    rng = random.Random(seed)
    rows = [
        {
            "post_id": f"{prefix}-{i:05d}",
            "model_id": model_id,
            "score": rng.random() * 0.5,
            "caption": f"caption {i}",
            "age": n - i,
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO review_items (post_id, model_id, score, threshold, status, "
                "created_at, caption, image_url) VALUES (:post_id, :model_id, :score, 0.5, "
                "'pending', now() - make_interval(secs => :age), :caption, "
                "'https://img.example/' || :post_id || '.jpg')"
            ),
            rows,
        )
        ids = conn.execute(sa.text("SELECT id FROM review_items ORDER BY id")).scalars().all()
    return list(ids)


def expire_lease(engine: sa.Engine, item_id: int) -> None:
    """Move an item's lease into the past, as if its moderator had walked away."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE review_items SET lease_expires_at = now() - interval '1 second', "
                "claimed_at = now() - interval '10 minutes' WHERE id = :id"
            ),
            {"id": item_id},
        )


def actions(engine: sa.Engine, item_id: int) -> list[tuple[str, str, str | None]]:
    return [(e.action, e.moderator, e.decision) for e in history(engine, item_id)]


def write_verdict(
    engine: sa.Engine,
    post_id: str,
    model_id: str,
    score: float | None,
    threshold: float,
    *,
    scored_at: datetime,
    review: ReviewContent | None = None,
) -> None:
    """One verdict written as the worker writes it: mismatch below the threshold, error without
    a score, and the review item `review` beside a mismatch."""
    verdict: VerdictKind = "error" if score is None else verdict_rule(score, threshold)
    error_code = "image_undecodable" if score is None else None
    row = Verdict(post_id, model_id, score, threshold, verdict, error_code, scored_at, scored_at)
    queued = review if verdict == "mismatch" else None
    write_outcomes(engine, [Outcome(Record(b"", topic="posts"), row, None, queued)])


def decide_post(
    engine: sa.Engine, post_id: str, model_id: str, decision: str, *, moderator: str = "alice"
) -> int:
    """Claim and decide the review item of `post_id` queued by `model_id`; returns its id."""
    with engine.connect() as conn:
        item_id = int(
            conn.execute(
                sa.text("SELECT id FROM review_items WHERE post_id = :p AND model_id = :m"),
                {"p": post_id, "m": model_id},
            ).scalar_one()
        )
    claim(engine, item_id, moderator, lease_s=LEASE)
    decide(engine, item_id, moderator, decision)
    return item_id
