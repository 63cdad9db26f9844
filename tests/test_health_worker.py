"""A real worker's probes: a tansu broker, Postgres, the tiny bundle, `itmguard worker`."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support import create_worker_topics, wait_for, wait_for_rows, worker_env
from worker.demo.embedded import EmbeddedPostgres, free_port, produce
from worker.testing import pooled_events

pytestmark = pytest.mark.integration

Answer = tuple[int, dict[str, Any]]


def _probe(port: int, path: str) -> Answer | None:
    """The status and JSON body of `path`, or None while nothing listens on `port`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return None


def _status(port: int, path: str = "/readyz") -> int | None:
    answer = _probe(port, path)
    return None if answer is None else answer[0]


def _checks(answer: Answer | None) -> dict[str, dict[str, Any]]:
    assert answer is not None, "nothing listens on the metrics port"
    checks: dict[str, dict[str, Any]] = answer[1]["checks"]
    return checks


@contextmanager
def _leased(path: Path) -> Iterator[Callable[[], None]]:
    """Hold a write lease on `path`: another process that opens it blocks until the lease is
    released (or the kernel's lease-break-time, 45 s by default, runs out), as a read from a
    slow volume would. Yields the function that releases it."""
    previous = signal.signal(signal.SIGIO, lambda *_: None)  # the kernel's "someone opened it"
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        yield lambda: fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, previous)


def _not_exited(proc: subprocess.Popen[bytes]) -> None:
    assert proc.poll() is None, f"the worker exited with {proc.returncode}"


def test_probes_follow_a_worker_through_loading_an_outage_and_recovery(
    broker: str,
    private_database: EmbeddedPostgres,
    tiny_bundle: Path,
    worker_process,
    tmp_path: Path,
) -> None:
    """/readyz is 503 naming the bundle while it loads, 200 once the worker is warmed up and
    in its group, 503 naming the database while Postgres is down (and the delivery, once a
    batch retries its write) and 200 again once it is back; /livez stays 200 throughout."""
    name = "probes"
    url = private_database.url("itmguard")
    create_worker_topics(broker, name)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    port = free_port()
    env = worker_env(
        broker,
        url,
        bundle,
        name,
        0.5,
        ITMGUARD_METRICS_PORT=str(port),
        ITMGUARD_METRICS_HOST="127.0.0.1",
    )
    worker = worker_process(env, tmp_path / "worker.log")
    with _leased(bundle / "bundle.json") as release:
        proc = worker.start()
        wait_for(lambda: _status(port) is not None, 60, "serving /readyz")
        loading = _probe(port, "/readyz")
        live_while_loading = _status(port, "/livez")
        _not_exited(proc)
        release()
    assert loading is not None and loading[0] == 503
    assert _checks(loading)["bundle"] == {"ok": False, "detail": "loading"}
    assert _checks(loading)["warmup"] == {"ok": False, "detail": "waiting for the bundle"}
    assert live_while_loading == 200

    wait_for(lambda: _status(port) == 200, 120, "ready")
    ready = _checks(_probe(port, "/readyz"))
    assert ready["bundle"] == {"ok": True, "detail": "tiny-blip@1 on CPUExecutionProvider"}
    assert ready["consumer"] == {"ok": True, "detail": "partitions assigned: 4"}
    (warmup,) = worker.log_events("warmup_done", batch=8, sequence=32)
    assert warmup["ms"] > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        scraped = response.read().decode().splitlines()
    (gauge,) = [line for line in scraped if line.startswith("itmguard_warmup_seconds ")]
    assert float(gauge.split()[1]) > 0

    private_database.stop()
    wait_for(lambda: _status(port) == 503, 30, "not ready with the database down")
    down = _probe(port, "/readyz")
    assert down is not None and down[0] == 503
    assert _checks(down)["database"] == {
        "ok": False,
        "detail": "database unavailable: OperationalError",
    }
    assert [name for name, check in _checks(down).items() if not check["ok"]] == ["database"]
    produce(broker, f"{name}-posts", pooled_events(20, name))
    wait_for(
        lambda: not _checks(_probe(port, "/readyz"))["delivery"]["ok"],
        60,
        "a batch retrying its write",
    )
    retrying = _checks(_probe(port, "/readyz"))["delivery"]["detail"]
    assert retrying.startswith("retrying write_verdicts: ")
    assert _status(port, "/livez") == 200
    _not_exited(proc)

    private_database.start()
    wait_for(lambda: _status(port) == 200, 60, "ready again")
    wait_for_rows(url, 20, timeout=60, proc=proc)
    assert _status(port, "/livez") == 200
    assert worker.stop() == 0


def test_a_replica_without_partitions_is_ready(
    broker: str, database_url: str, tiny_bundle: Path, worker_process, tmp_path: Path
) -> None:
    """Two static members (ITMGUARD_GROUP_INSTANCE_ID) on a one-partition topic: both become
    ready, one holding the partition and the other none, and the posts are scored."""
    name = "spare"
    create_worker_topics(broker, name, partitions=1)
    ports = [free_port(), free_port()]
    workers = []
    for i, port in enumerate(ports):
        env = worker_env(
            broker,
            database_url,
            tiny_bundle,
            name,
            0.5,
            ITMGUARD_METRICS_PORT=str(port),
            ITMGUARD_METRICS_HOST="127.0.0.1",
            ITMGUARD_GROUP_INSTANCE_ID=f"{name}-{i}",
        )
        workers.append(worker_process(env, tmp_path / f"worker-{i}.log"))
        workers[-1].start()
    wait_for(lambda: all(_status(port) == 200 for port in ports), 120, "both replicas ready")
    consumers = sorted(_checks(_probe(port, "/readyz"))["consumer"]["detail"] for port in ports)
    assert consumers == [
        "a member with no partitions: more replicas than them",
        "partitions assigned: 1",
    ]
    produce(broker, f"{name}-posts", pooled_events(50, name))
    wait_for_rows(database_url, 50, timeout=120)
    assert [worker.stop() for worker in workers] == [0, 0]
