"""End-to-end runs for `benchmarks.throughput`: a real broker, Postgres and worker process.

The stack is the demo's: a tansu broker on loopback and an embedded Postgres,
here with `track_commit_timestamp` on, so each verdict row's commit time is
read back from Postgres itself (`pg_xact_commit_timestamp(xmin)`): latency is
event time to the row being durable, not to some log line.

Throughput runs load every post into the topic first, then start the consumer,
and count posts per second between the 10th percentile commit and the last
(start-up and the first batch excluded). Latency runs send posts at a steady
rate, stamped with the time they were sent, to a consumer already running.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

from worker.demo.embedded import (
    EmbeddedPostgres,
    create_topics,
    produce,
    stop_process,
    tansu_broker,
)

Events = Callable[[str, int], list[tuple[bytes | None, bytes]]]
"""Makes `count` post events whose ids start with a prefix, stamped by the callee."""


@dataclass(frozen=True)
class Stack:
    bootstrap: str
    database_url: str
    logs: Path


@contextmanager
def stack(root: Path) -> Iterator[Stack]:
    """A broker and a migrated Postgres that records commit times, under `root`."""
    from alembic import command

    from worker.persistence import alembic_config

    root.mkdir(parents=True, exist_ok=True)
    server = EmbeddedPostgres(root / "pgdata")
    server.start()
    admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("ALTER SYSTEM SET track_commit_timestamp = on"))
        if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = 'bench'")).first():
            conn.execute(sa.text("CREATE DATABASE bench"))
    admin.dispose()
    server.stop()
    server.start()  # track_commit_timestamp takes effect at server start
    try:
        command.upgrade(alembic_config(server.url("bench")), "head")
        with tansu_broker(root / "tansu.log") as bootstrap:
            yield Stack(bootstrap, server.url("bench"), root)
    finally:
        server.stop()


@dataclass(frozen=True)
class Run:
    """What one consumer did with one set of posts."""

    posts: int
    posts_per_s: float
    flagged_share: float | None = None
    shadow_posts: int | None = None
    latency_ms: dict[str, float] | None = None
    cpu_ms_per_post: float | None = None
    rss_mib: list[tuple[int, float]] | None = None


def naive_command(s: Stack, name: str, bundle: Path, count: int) -> list[str]:
    """`benchmarks.naive_consumer` on the posts topic of `name`."""
    return [
        sys.executable,
        "-m",
        "benchmarks.naive_consumer",
        s.bootstrap,
        f"{name}-posts",
        str(bundle),
        s.database_url,
        str(count),
    ]


def worker_env(s: Stack, bundle: Path, name: str, **extra: str) -> dict[str, str]:
    """The worker's settings for a run named `name`: its own topics and group, batches of
    32, everything else at its default (caption explanations included)."""
    return {
        **os.environ,
        "ITMGUARD_KAFKA_BOOTSTRAP": s.bootstrap,
        "ITMGUARD_DATABASE_URL": s.database_url,
        "ITMGUARD_BUNDLE": str(bundle),
        "ITMGUARD_POSTS_TOPIC": f"{name}-posts",
        "ITMGUARD_FLAGS_TOPIC": f"{name}-flags",
        "ITMGUARD_DLQ_TOPIC": f"{name}-dlq",
        "ITMGUARD_GROUP_ID": f"{name}-group",
        "ITMGUARD_PROVIDERS": "cpu",
        "ITMGUARD_LOG_LEVEL": "warning",
        "ITMGUARD_MAX_BATCH": "32",
        **extra,
    }


def _topics(s: Stack, name: str) -> None:
    create_topics(s.bootstrap, {f"{name}-posts": 1, f"{name}-flags": 1, f"{name}-dlq": 1})


def _commits(url: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Commit times and event times (epoch seconds) of the verdict rows of `prefix`, one per
    post: a shadow's rows are left out."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)),"
                " extract(epoch FROM event_time) FROM verdicts"
                " WHERE post_id LIKE :prefix AND role = 'primary' ORDER BY 1"
            ),
            {"prefix": f"{prefix}-%"},
        ).all()
    engine.dispose()
    commits = np.array([float(r[0]) for r in rows])
    events = np.array([float(r[1]) if r[1] is not None else np.nan for r in rows])
    return commits, events


def _over_posts(url: str, prefix: str, aggregate: str, role: str) -> float:
    """`aggregate` (SQL) over the verdict rows of `prefix`'s posts written by `role`."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        value = conn.execute(
            sa.text(
                f"SELECT {aggregate} FROM verdicts WHERE post_id LIKE :prefix AND role = :role"
            ),
            {"prefix": f"{prefix}-%", "role": role},
        ).scalar_one()
    engine.dispose()
    return float(value or 0.0)


def _flagged(url: str, prefix: str) -> float:
    """The share of `prefix`'s posts the model in service called a mismatch."""
    return _over_posts(url, prefix, "avg((verdict = 'mismatch')::int)", "primary")


def _shadowed(url: str, prefix: str) -> int:
    """How many of `prefix`'s posts a shadow model gave a verdict for."""
    return int(_over_posts(url, prefix, "count(*)", "shadow"))


def _wait(
    url: str, prefix: str, count: int, proc: subprocess.Popen[bytes], limit_s: float, log: Path
) -> None:
    deadline = time.monotonic() + limit_s
    while len(_commits(url, prefix)[0]) < count:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"the consumer exited with {proc.returncode} before {count} rows; "
                f"the end of {log}:\n{tail}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} rows of {prefix} after {limit_s:.0f} s")
        time.sleep(0.5)


def _rate(commits: np.ndarray) -> float:
    start = float(np.percentile(commits, 10))
    later = commits[commits > start]
    return len(later) / (float(commits[-1]) - start)


def _start(command: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(list(command), env=env, stdout=out, stderr=subprocess.STDOUT)


WORKER = (sys.executable, "-m", "worker.cli", "worker")


def throughput(
    s: Stack,
    name: str,
    events: Events,
    count: int,
    command: Sequence[str] = WORKER,
    env: dict[str, str] | None = None,
    rss_every: int = 0,
    limit_s: float = 900,
) -> Run:
    """Posts per second over `count` preloaded posts; CPU-ms per post of the consumer's
    process, and its RSS every `rss_every` posts when asked."""
    _topics(s, name)
    preload(s, name, events, count)
    log = s.logs / f"{name}.log"
    proc = _start(command, env or dict(os.environ), log)
    rss: list[tuple[int, float]] = []
    try:
        process = psutil.Process(proc.pid)
        _wait(s.database_url, name, 1, proc, limit_s, log)
        cpu_start, done = _cpu(process), len(_commits(s.database_url, name)[0])
        deadline = time.monotonic() + limit_s
        while done < count:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: {done} of {count} rows when the run ended")
            time.sleep(1.0)
            done = len(_commits(s.database_url, name)[0])
            if rss_every and (not rss or done - rss[-1][0] >= rss_every):
                rss.append((done, process.memory_info().rss / 2**20))
        cpu_ms = (_cpu(process) - cpu_start) * 1000
    finally:
        stop_process(proc, 30)
    commits, _ = _commits(s.database_url, name)
    first_rows = int(np.sum(commits <= commits[0]))
    return Run(
        posts=len(commits),
        posts_per_s=_rate(commits),
        flagged_share=_flagged(s.database_url, name),
        shadow_posts=_shadowed(s.database_url, name),
        cpu_ms_per_post=cpu_ms / max(len(commits) - first_rows, 1),
        rss_mib=rss or None,
    )


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def latency(
    s: Stack, name: str, events: Events, rate: float, seconds: float, env: dict[str, str]
) -> Run:
    """p50/p95/p99 from event time to durable verdict row, posts sent at `rate` per second
    to a worker already consuming."""
    _topics(s, name)
    log = s.logs / f"{name}.log"
    proc = _start(WORKER, env, log)
    try:
        warm = f"{name}w"
        produce(s.bootstrap, f"{name}-posts", events(warm, 8))
        _wait(s.database_url, warm, 8, proc, 300, log)
        total = int(rate * seconds)
        _paced(s, name, events, total, rate)
        _wait(s.database_url, name, total, proc, 300, log)
    finally:
        stop_process(proc, 30)
    commits, sent = _commits(s.database_url, name)
    waits = (commits - sent) * 1000
    return Run(
        posts=len(commits),
        posts_per_s=len(commits) / (float(commits[-1]) - float(np.nanmin(sent))),
        latency_ms={f"p{q}": float(np.nanpercentile(waits, q)) for q in (50, 95, 99)},
    )


def _paced(s: Stack, name: str, events: Events, total: int, rate: float) -> None:
    """Send `total` posts at `rate` per second, in tenth-of-a-second slices through one
    producer, each post stamped as its slice is made."""

    async def send() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap, acks="all", max_request_size=32 << 20
        )
        await producer.start()
        try:
            per_slice = max(1, round(rate / 10))
            started = time.monotonic()
            pending = []
            for sent in range(0, total, per_slice):
                await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
                for key, value in events(f"{name}-{sent:06d}", min(per_slice, total - sent)):
                    pending.append(await producer.send(f"{name}-posts", value=value, key=key))
            await asyncio.gather(*pending)
        finally:
            await producer.stop()

    asyncio.run(send())


def preload(s: Stack, name: str, events: Events, count: int, chunk: int = 5000) -> None:
    """Put `count` posts in the topic, made and sent `chunk` at a time."""
    for start in range(0, count, chunk):
        batch = events(f"{name}-{start // chunk:03d}", min(chunk, count - start))
        produce(s.bootstrap, f"{name}-posts", batch)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
