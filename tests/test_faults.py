"""Faults on real parts: killed workers, a database outage, a broker cut, SIGTERM, poison input.

Each test is bounded in events and in time, and prints the figures it saw.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.proxy import CuttableProxy
from tests.support import (
    consume,
    count_rows,
    create_worker_topics,
    wait_for,
    wait_for_rows,
    worker_env,
)
from worker.agents import EXIT_ABANDONED
from worker.demo.embedded import EmbeddedPostgres, free_port, produce, tansu_broker
from worker.testing import poison_corpus, pooled_events

pytestmark = pytest.mark.integration

OUTAGE_S = 20.0


def _post_ids(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text("SELECT post_id FROM verdicts"))]
    finally:
        engine.dispose()


def _wait_for_growth(url: str, since: int, timeout: float) -> float:
    """Seconds until `verdicts` holds more than `since` rows."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if count_rows(url) > since:
                return time.monotonic() - start
        except sa.exc.OperationalError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"no new verdicts within {timeout}s")


def test_sigkilled_workers_lose_nothing(
    broker: str, database_url: str, tiny_bundle: Path, worker_process, tmp_path: Path
) -> None:
    """Two workers, 10,000 events, one SIGKILLed three times: one verdict row per post; flag
    duplicates only ever repeat a flag_id."""
    name, total = "kill", 10_000
    create_worker_topics(broker, name)
    env = worker_env(broker, database_url, tiny_bundle, name, 0.5, ITMGUARD_MAX_BATCH="64")
    steady = worker_process(env, tmp_path / "steady.log")
    steady.start()
    victim = worker_process(env, tmp_path / "victim-0.log")
    victim.start()
    messages = pooled_events(total, name)
    started = time.monotonic()
    produce(broker, f"{name}-posts", messages)
    wait_for_rows(database_url, 500, timeout=120)
    rng = random.Random(7)
    kills = []
    for k in range(3):
        time.sleep(rng.uniform(1, 5))
        kills.append(round(time.monotonic() - started, 1))
        rows_at_kill = count_rows(database_url)
        victim.stop(signal.SIGKILL)
        print(f"kill {k + 1} at {kills[-1]}s with {rows_at_kill} rows")
        victim = worker_process(env, tmp_path / f"victim-{k + 1}.log")
        victim.start()
    wait_for_rows(database_url, total, timeout=400)
    elapsed = time.monotonic() - started
    ids = _post_ids(database_url)
    assert len(ids) == len(set(ids)) == total
    assert set(ids) == {m[0].decode() for m in messages}
    mismatches = count_rows(database_url, "verdict = 'mismatch'")
    flags = [
        json.loads(v) for v in consume(broker, f"{name}-flags", expect=mismatches, timeout=120)
    ]
    per_id = Counter(f["flag_id"] for f in flags)
    assert len(per_id) == mismatches
    assert all(len({f["post_id"] for f in flags if f["flag_id"] == fid}) == 1 for fid in per_id)
    duplicates = len(flags) - len(per_id)
    print(
        f"\n{total} events, kills at {kills}s: {len(ids)} rows in {elapsed:.1f}s, "
        f"{mismatches} mismatches, {len(flags)} flag messages ({duplicates} duplicates)"
    )


def test_database_outage_is_waited_out(
    broker: str,
    private_database: EmbeddedPostgres,
    tiny_bundle: Path,
    worker_process,
    tmp_path: Path,
) -> None:
    """The worker's Postgres stops for 20 s mid-stream: the worker retries, logs it, resumes, and
    every post gets its row."""
    name, total = "outage", 3000
    url = private_database.url("itmguard")
    create_worker_topics(broker, name)
    worker = worker_process(
        worker_env(broker, url, tiny_bundle, name, 0.5), tmp_path / "worker.log"
    )
    proc = worker.start()
    produce(broker, f"{name}-posts", pooled_events(total, name, seed=1))
    wait_for_rows(url, 400, timeout=120, proc=proc)
    private_database.stop()
    stopped = time.monotonic()
    time.sleep(OUTAGE_S)
    assert proc.poll() is None, "the worker died during the outage"
    private_database.start()
    at_restart = count_rows(url)
    recovery = _wait_for_growth(url, at_restart, timeout=120)
    wait_for_rows(url, total, timeout=240, proc=proc)
    ids = _post_ids(url)
    assert len(ids) == len(set(ids)) == total
    retries = worker.log_events("retrying", step="write_verdicts")
    assert retries, "the outage left no retry in the logs"
    assert worker.log_events("recovered", step="write_verdicts")
    print(
        f"\noutage {time.monotonic() - stopped - recovery:.1f}s, {len(retries)} retries logged, "
        f"rows before restart {at_restart}, first new row {recovery:.1f}s after restart, "
        f"{len(ids)} of {total} rows"
    )
    assert worker.stop() == 0


def test_broker_cut_is_recovered_from(
    database_url: str, tiny_bundle: Path, worker_process, tmp_path: Path
) -> None:
    """A proxy cuts the worker off its broker for 20 s: it reconnects by itself and loses
    nothing."""
    name, total = "cut", 3000
    broker_port, proxy_port = free_port(), free_port()
    with (
        CuttableProxy(proxy_port, broker_port) as proxy,
        tansu_broker(tmp_path / "tansu.log", broker_port, advertised_port=proxy_port) as bootstrap,
    ):
        create_worker_topics(bootstrap, name)
        env = worker_env(bootstrap, database_url, tiny_bundle, name, 0.5)
        worker = worker_process(env, tmp_path / "worker.log")
        proc = worker.start()
        produce(bootstrap, f"{name}-posts", pooled_events(total, name, seed=2))
        wait_for_rows(database_url, 400, timeout=120, proc=proc)
        proxy.cut()
        cut_rows = count_rows(database_url)
        time.sleep(OUTAGE_S)
        during = count_rows(database_url) - cut_rows
        assert proc.poll() is None, "the worker died while cut off"
        proxy.restore()
        at_restore = count_rows(database_url)
        recovery = (
            _wait_for_growth(database_url, at_restore, timeout=180) if at_restore < total else 0.0
        )
        wait_for_rows(database_url, total, timeout=240, proc=proc)
        ids = _post_ids(database_url)
        assert len(ids) == len(set(ids)) == total
        print(
            f"\ncut {OUTAGE_S:.0f}s at {cut_rows} rows, {during} rows written while cut "
            f"(already fetched), first new row {recovery:.1f}s after restore, "
            f"{len(ids)} of {total} rows"
        )
        assert worker.stop() == 0


def test_sigterm_during_an_outage_commits_nothing_unwritten(
    broker: str,
    private_database: EmbeddedPostgres,
    tiny_bundle: Path,
    worker_process,
    tmp_path: Path,
) -> None:
    """SIGTERM while a batch cannot be written abandons it uncommitted: the next worker writes
    it."""
    name, total = "term", 1500
    url = private_database.url("itmguard")
    create_worker_topics(broker, name)
    env = worker_env(broker, url, tiny_bundle, name, 0.5, ITMGUARD_SHUTDOWN_GRACE_S="5")
    first = worker_process(env, tmp_path / "first.log")
    proc = first.start()
    produce(broker, f"{name}-posts", pooled_events(total, name, seed=3))
    wait_for_rows(url, 200, timeout=120, proc=proc)
    private_database.stop()
    wait_for(
        lambda: bool(first.log_events("retrying", step="write_verdicts")),
        timeout=60,
        what="retrying a batch's write while the database is down",
    )
    signalled = time.monotonic()
    code = first.stop(signal.SIGTERM, timeout=60)
    stop_s = time.monotonic() - signalled
    assert code == EXIT_ABANDONED and stop_s < 30
    assert '"batch_abandoned"' in first.logs()
    private_database.start()
    written = count_rows(url)
    assert written < total
    second = worker_process(env, tmp_path / "second.log")
    wait_for_rows(url, total, timeout=240, proc=second.start())
    ids = _post_ids(url)
    assert sorted(ids) == sorted(f"{name}-{i:05d}" for i in range(total))
    print(
        f"\nSIGTERM during outage: exit {code} after {stop_s:.1f}s with {written} rows; "
        f"second worker completed {len(ids)} of {total}"
    )
    assert second.stop() == 0


def test_poison_corpus_never_stops_the_worker(
    broker: str, database_url: str, tiny_bundle: Path, worker_process, tmp_path: Path
) -> None:
    """500+ bad events interleaved with 500 good ones: each bad one gets its code, each good one
    its verdict, and the worker keeps going."""
    name = "poison"
    create_worker_topics(broker, name)
    env = worker_env(
        broker, database_url, tiny_bundle, name, 0.5, ITMGUARD_IMAGE_MAX_BYTES="1000000"
    )
    worker = worker_process(env, tmp_path / "worker.log")
    proc = worker.start()
    bad = poison_corpus()
    good = pooled_events(500, "good", seed=4)
    messages: list[tuple[bytes | None, bytes]] = []
    for i, (post_id, _, payload) in enumerate(bad):
        messages.append((post_id.encode() if post_id else None, payload))
        if i < len(good):
            messages.append(good[i])
    messages += good[len(bad) :]
    produce(broker, f"{name}-posts", messages)
    with_id = [b for b in bad if b[0] is not None]
    wait_for_rows(database_url, len(good) + len(with_id), timeout=300, proc=proc)
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = {
            r.post_id: r
            for r in conn.execute(sa.text("SELECT post_id, verdict, error_code FROM verdicts"))
        }
    engine.dispose()
    for post_id, _ in good:
        assert rows[post_id.decode()].verdict in ("match", "mismatch")
    for post_id, reason, _ in with_id:
        assert (post_id, rows[post_id].verdict, rows[post_id].error_code) == (
            post_id,
            "error",
            reason,
        )
    letters = [json.loads(v) for v in consume(broker, f"{name}-dlq", expect=len(bad), timeout=120)]
    assert Counter(letter["reason"] for letter in letters) == Counter(
        reason for _, reason, _ in bad
    )
    assert proc.poll() is None
    print(
        f"\n{len(bad)} bad events ({dict(Counter(r for _, r, _ in bad))}) and {len(good)} good: "
        f"{len(rows)} rows, {len(letters)} dead letters"
    )
    assert worker.stop() == 0
