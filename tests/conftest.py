"""Shared fixtures: a real broker, a real database, a real exported bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import fresh_database
from worker.demo.embedded import EmbeddedPostgres, stop_process, tansu_broker
from worker.persistence import create_engine


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tansu broker for the whole run; tests keep apart by topic and group names."""
    with tansu_broker(tmp_path_factory.mktemp("tansu") / "tansu.log") as bootstrap:
        yield bootstrap


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh, migrated database for one test."""
    from alembic import command

    from worker.persistence import alembic_config

    with fresh_database() as url:
        command.upgrade(alembic_config(url), "head")
        yield url


@pytest.fixture
def private_database(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A migrated Postgres of this test's own (database `itmguard`), which it may stop and
    start."""
    import sqlalchemy as sa
    from alembic import command

    from worker.persistence import alembic_config

    server = EmbeddedPostgres(tmp_path / "pgdata")
    server.start()
    admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("CREATE DATABASE itmguard"))
    admin.dispose()
    command.upgrade(alembic_config(server.url("itmguard")), "head")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BLIP ITM checkpoint exported through the real export path."""
    from export.blip import export_blip
    from export.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    checkpoint = make_tiny_checkpoint(root / "checkpoint", seed=0)
    export_blip(checkpoint, root / "bundle", name="tiny-blip", version="1", progress=lambda _: None)
    return root / "bundle"


class WorkerProcess:
    """`itmguard worker` in a child process, its JSON logs in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self.proc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        return stop_process(self.proc, timeout, sig)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self, event: str, **fields: object) -> list[dict[str, object]]:
        """The worker's JSON log lines named `event` whose fields include `fields`."""
        found = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == event and fields.items() <= entry.items():
                    found.append(entry)
        return found


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[type[WorkerProcess]]:
    """Start workers with `worker_process(env, log_path)`; any left running are killed."""
    started: list[WorkerProcess] = []

    class Tracked(WorkerProcess):
        def start(self) -> subprocess.Popen[bytes]:
            started.append(self)
            return super().start()

    yield Tracked
    for worker in started:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine on the test's fresh database."""
    eng = create_engine(database_url)
    yield eng
    eng.dispose()
