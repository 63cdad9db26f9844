"""The liveness and readiness checks, and the server that answers them beside /metrics."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping

import pytest

from worker.config import FetchLimits
from worker.demo.embedded import free_port
from worker.errors import DatabaseNotMigrated, DatabaseUnavailable
from worker.health import (
    DELIVERY_SLOW_S,
    LOOP_REPLY_S,
    CachedCheck,
    Check,
    Health,
    scoring_bound_s,
    serve,
)
from worker.metrics import Metrics
from worker.progress import BatchProgress


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ready_health(
    clock: Clock, database: Callable[[], Check] = lambda: Check(True, "fine")
) -> Health:
    """A Health past start-up: loaded, warmed up with a 60 s scoring bound, assigned."""
    health = Health(database=database, progress=BatchProgress(clock=clock))
    health.bundle_loaded("m@1", "CPUExecutionProvider")
    health.warmed_up(0.02, scoring_bound_s=60.0)
    health.partitions_assigned(2)
    return health


def _states(checks: Mapping[str, Check]) -> dict[str, bool]:
    return {name: check.ok for name, check in checks.items()}


def test_not_ready_until_loaded_warmed_up_and_assigned() -> None:
    """Readiness comes in order: bundle, warm-up, a place in the group; the database check
    counts throughout."""
    health = Health(database=lambda: Check(True, "fine"))
    assert _states(health.ready().checks) == {
        "bundle": False,
        "warmup": False,
        "database": True,
        "consumer": False,
        "delivery": True,
    }
    assert health.ready().checks["bundle"].detail == "loading"
    health.bundle_loaded("m@1", "CPUExecutionProvider")
    assert health.ready().checks["bundle"] == Check(True, "m@1 on CPUExecutionProvider")
    health.warmed_up(0.0125, scoring_bound_s=60.0)
    assert health.ready().checks["warmup"] == Check(True, "12 ms")
    assert not health.ready().ok
    health.partitions_assigned(3)
    assert health.ready().ok
    assert health.live().ok


def test_an_empty_assignment_is_ready_and_a_rebalance_is_not() -> None:
    """With more replicas than partitions the spare one is a ready member; during a rebalance
    (partitions revoked, none assigned yet) a replica is not ready."""
    health = _ready_health(Clock())
    health.partitions_assigned(0)
    assert health.ready().ok
    assert "no partitions" in health.ready().checks["consumer"].detail
    health.partitions_revoked()
    assert _states(health.ready().checks)["consumer"] is False
    health.partitions_assigned(1)
    assert health.ready().ok


def test_a_database_that_fails_its_check_makes_the_worker_not_ready() -> None:
    """The database check's failure is a readiness failure only, with the reason."""
    answers = [Check(True, "fine")]
    health = _ready_health(Clock(), database=lambda: answers[-1])
    assert health.ready().ok
    answers.append(Check(False, "database unavailable: OperationalError"))
    assert not health.ready().ok
    assert health.ready().checks["database"] == answers[-1]
    assert health.live().ok


def test_waiting_out_an_outage_is_not_ready_but_live() -> None:
    """A write that is retried, or pending past DELIVERY_SLOW_S, makes the worker not ready;
    it stays live, however long the outage."""
    clock = Clock()
    health = _ready_health(clock)
    progress = health.progress
    progress.enter("score")
    progress.leave("score")
    progress.enter("write_verdicts")
    assert health.ready().ok
    progress.failed("write_verdicts")
    progress.failed("write_verdicts")
    delivery = health.ready().checks["delivery"]
    assert not delivery.ok and "retrying write_verdicts: 2 failed" in delivery.detail
    clock.now += 3600
    assert health.live().ok
    progress.enter("publish")
    assert health.ready().ok
    clock.now += DELIVERY_SLOW_S + 1
    assert health.ready().checks["delivery"].detail == "publish waiting for 11 s"
    assert health.live().ok
    progress.leave("publish")
    assert health.ready().ok


def test_a_batch_scoring_past_its_bound_is_not_live() -> None:
    """Scoring longer than the bound set at warm-up means the worker is wedged: /livez fails
    and names the step."""
    clock = Clock()
    health = _ready_health(clock)
    health.progress.enter("score")
    clock.now += 59
    assert health.live().ok
    clock.now += 2
    batch = health.live().checks["batch"]
    assert batch == Check(False, "score of one batch for 61 s, over its 60 s bound")


def test_each_stage_of_the_pipeline_is_watched_on_its_own() -> None:
    """One batch decoding, one in the model and one retrying its write: the first two are
    held to the scoring bound, the third to the delivery check; leaving one stage keeps
    the others."""
    clock = Clock()
    health = _ready_health(clock)
    progress = health.progress
    progress.enter("score")
    clock.now += 30
    progress.enter("prepare")
    progress.enter("write_verdicts")
    progress.failed("write_verdicts")
    assert health.live().checks["batch"] == Check(True, "score for 30.0 s, prepare for 0.0 s")
    assert not health.ready().checks["delivery"].ok
    clock.now += 31
    assert not health.live().ok
    progress.leave("score")
    assert health.live().ok
    assert set(progress.steps) == {"prepare", "delivery"}


def test_the_scoring_bound_covers_fetch_retries_and_the_model() -> None:
    """The bound is two minutes, plus every fetch attempt's timeout, plus ten warm-ups scaled
    to a full batch."""
    limits = FetchLimits(timeout_s=10.0, retries=2)
    assert scoring_bound_s(limits, warmup_s=0.5, batch_scale=4.0) == 120 + 30 + 20


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, stopped and closed afterwards."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_the_event_loop_must_answer(loop_thread: asyncio.AbstractEventLoop) -> None:
    """A running loop answers; a loop blocked by a callback fails within LOOP_REPLY_S."""
    health = Health()
    assert health.live().checks["event_loop"] == Check(True, "not started yet")
    health.loop_started(loop_thread)
    assert health.live().checks["event_loop"].ok
    release = threading.Event()
    loop_thread.call_soon_threadsafe(release.wait, 30)
    try:
        check = health.live().checks["event_loop"]
    finally:
        release.set()
    assert check == Check(False, f"no answer within {LOOP_REPLY_S:g} s")


def test_a_closed_event_loop_is_not_live() -> None:
    """Once the loop is closed, the worker is not live."""
    loop = asyncio.new_event_loop()
    loop.close()
    health = Health()
    health.loop_started(loop)
    assert health.live().checks["event_loop"] == Check(False, "closed")


def test_a_cached_check_runs_once_per_period() -> None:
    """However many probes arrive, the database is asked once per TTL; its errors become
    the check's detail, and an unexpected error only its type name."""
    clock = Clock()
    calls: list[float] = []
    failure: list[Exception] = []

    def probe() -> None:
        calls.append(clock.now)
        if failure:
            raise failure[0]

    check = CachedCheck(probe, passed="schema current", ttl_s=5.0, clock=clock)
    assert [check() for _ in range(10)] == [Check(True, "schema current")] * 10
    assert len(calls) == 1
    failure.append(DatabaseUnavailable("database unavailable: OperationalError"))
    clock.now += 4.9
    assert check().ok
    clock.now += 0.1
    assert check() == Check(False, "database unavailable: OperationalError")
    assert len(calls) == 2
    failure[0] = DatabaseNotMigrated("database schema is at revision 0002, this worker needs 0003")
    clock.now += 5
    assert "0003" in check().detail
    failure[0] = KeyError("password=secret")
    clock.now += 5
    assert check() == Check(False, "check failed: KeyError")


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_the_metrics_port_serves_probes_and_metrics() -> None:
    """/livez and /readyz answer 200 or 503 with JSON naming each check; /metrics is the
    Prometheus text as before."""
    metrics = Metrics()
    metrics.model_info.labels("m@1", "CPUExecutionProvider", "primary").set(1)
    health = Health(database=lambda: Check(True, "fine"))
    port = free_port()
    server = serve("127.0.0.1", port, health, metrics.registry)
    base = f"http://127.0.0.1:{port}"
    try:
        status, kind, body = _get(base + "/readyz")
        assert (status, kind) == (503, "application/json")
        answer = json.loads(body)
        assert answer["ok"] is False
        assert answer["checks"]["bundle"] == {"ok": False, "detail": "loading"}
        assert set(answer["checks"]) == {"bundle", "warmup", "database", "consumer", "delivery"}
        status, _, body = _get(base + "/livez")
        assert status == 200
        assert json.loads(body) == {
            "ok": True,
            "checks": {
                "event_loop": {"ok": True, "detail": "not started yet"},
                "batch": {"ok": True, "detail": "no batch in flight"},
            },
        }
        health.bundle_loaded("m@1", "CPUExecutionProvider")
        health.warmed_up(0.01, scoring_bound_s=60.0)
        health.partitions_assigned(1)
        assert _get(base + "/readyz")[0] == 200
        status, kind, body = _get(base + "/metrics")
        assert status == 200 and kind.startswith("text/plain")
        assert (
            'itmguard_model_info{model_id="m@1",provider="CPUExecutionProvider",role="primary"} 1.0'
            in body
        )
    finally:
        server.shutdown()
        server.server_close()
