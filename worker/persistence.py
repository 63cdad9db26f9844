"""The worker's side of Postgres: engines, the schema check, and writing a batch's verdicts.

It writes verdict rows and inserts new review items beside them, in one
transaction; everything else done to review items (claims, decisions, the
audit, accounts) is `worker.review`'s. Writes are idempotent: a verdict is
unique on (post_id, model_id) and written with an upsert, so a batch
redelivered after a crash leaves the same rows. SQLAlchemy's connection errors
become `DatabaseUnavailable` here (`translated`, which `worker.review` uses
too); callers retry on it and never see a driver exception.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib.resources import files
from typing import Any

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql

from worker.errors import DatabaseNotMigrated, DatabaseUnavailable
from worker.verdicts import Outcome, Verdict

__all__ = [
    "MIGRATION_LOCK_KEY",
    "PROBE_TIMEOUT_S",
    "alembic_config",
    "check_schema_current",
    "create_engine",
    "create_probe_engine",
    "metadata",
    "review_items",
    "translated",
    "verdicts",
    "write_outcomes",
]

MIGRATION_LOCK_KEY = 0x69746D67
"""The Postgres advisory lock (`pg_advisory_lock(1769237863)`, "itmg" in ASCII) that
`migrations/env.py` holds around a migration, so concurrent upgrades run one after another."""

PROBE_TIMEOUT_S = 2
"""Seconds a health probe waits to connect; libpq's `connect_timeout` allows no less."""

metadata = sa.MetaData()

verdicts = sa.Table(
    "verdicts",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("post_id", sa.Text, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("verdict", sa.Text, nullable=False),
    sa.Column("error_code", sa.Text),
    sa.Column("event_time", sa.DateTime(timezone=True)),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("topic", sa.Text),
    sa.Column("partition", sa.Integer),
    sa.Column("offset", sa.BigInteger),
    sa.Column("role", sa.Text, nullable=False, server_default="primary"),
    sa.UniqueConstraint("post_id", "model_id", name="uq_verdicts_post_model"),
)

review_items = sa.Table(
    "review_items",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("post_id", sa.Text, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("caption", sa.Text, nullable=False),
    sa.Column("image_url", sa.Text),
    sa.Column("thumbnail", sa.LargeBinary),
    sa.Column("event_time", sa.DateTime(timezone=True)),
    sa.Column("explanation", postgresql.JSONB),
    sa.Column("author_id", sa.Text),
    sa.UniqueConstraint("post_id", "model_id", name="uq_review_items_post_model"),
)


def create_engine(url: str, *, pre_ping: bool = True) -> sa.Engine:
    """An engine that, with `pre_ping`, checks a connection before each use, so a restarted
    Postgres is survived at the cost of a round trip per checkout. The worker's batch writes
    turn it off: they retry a lost connection anyway (`retry_forever`), so the ping would
    only double the round trips of every batch."""
    return sa.create_engine(url, pool_pre_ping=pre_ping, pool_size=2, max_overflow=2)


def create_probe_engine(url: str) -> sa.Engine:
    """An engine for health probes: a fresh connection per probe, given up after
    PROBE_TIMEOUT_S, so a probe never waits out TCP's own timeout on a lost server."""
    return sa.create_engine(
        url, poolclass=sa.NullPool, connect_args={"connect_timeout": PROBE_TIMEOUT_S}
    )


@contextmanager
def translated() -> Iterator[None]:
    """Turn SQLAlchemy's connection failures into `DatabaseUnavailable`."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise DatabaseUnavailable(f"database unavailable: {type(exc.orig).__name__}") from exc
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise DatabaseUnavailable("database connection lost") from exc
        raise


def write_outcomes(engine: sa.Engine, outcomes: Sequence[Outcome]) -> int:
    """Upsert the verdicts of `outcomes` and queue mismatches for review, in one statement.

    One statement, sent once: the batch travels as one JSON parameter, a
    data-modifying CTE upserts the verdict rows and the statement around it
    inserts the review items. A single statement is atomic on its own, so it
    runs outside an explicit transaction (no BEGIN or COMMIT round trips);
    with a database across a network, round trips, not rows, are what a batch
    write costs.

    `outcomes` holds at most one outcome per (post_id, model_id), as
    `last_outcomes` chooses them; outcomes without a post_id write nothing.
    Returns the number of verdict rows written.

    Raises:
        ValueError: two outcomes for one post: the caller must choose first.
        DatabaseUnavailable: the statement did not commit; nothing of it was written.
    """
    decided = [(o.verdict, o) for o in outcomes if o.verdict is not None and o.verdict.post_id]
    if len({(v.post_id, v.model_id) for v, _ in decided}) < len(decided):
        raise ValueError("one outcome per post and model: choose them with last_outcomes")
    if not decided:
        return 0
    rows = [_batch_row(v, o) for v, o in decided]
    with translated(), engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            _WRITE_BATCH, {"rows": json.dumps(rows, default=_json_value)}
        )
    return len(rows)


def _write_batch_statement() -> sa.TextClause:
    """The one statement `write_outcomes` sends, its column lists read from the tables."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves it untyped
    keys = ("post_id", "model_id")
    verdict_cols = [c for c in verdicts.c if c.name != "id"]
    review_cols = [c for c in review_items.c if c.name != "id"]
    record: dict[str, str] = {}
    for column in [*verdict_cols, *review_cols]:
        binary = isinstance(column.type, sa.LargeBinary)
        record[column.name] = "text" if binary else column.type.compile(dialect=dialect)

    def names(columns: Sequence[sa.Column[Any]]) -> str:
        return ", ".join(f'"{c.name}"' for c in columns)

    def values(columns: Sequence[sa.Column[Any]]) -> str:
        return ", ".join(
            f"decode(\"{c.name}\", 'base64')"
            if isinstance(c.type, sa.LargeBinary)
            else f'"{c.name}"'
            for c in columns
        )

    updates = ", ".join(
        f'"{c.name}" = EXCLUDED."{c.name}"' for c in verdict_cols if c.name not in keys
    )
    fields = ", ".join(f'"{name}" {kind}' for name, kind in record.items())
    return sa.text(
        f"WITH batch AS (SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) "
        f"AS r({fields}, queued boolean)), "
        f"written AS (INSERT INTO verdicts ({names(verdict_cols)}) "
        f"SELECT {values(verdict_cols)} FROM batch "
        f"ON CONFLICT ON CONSTRAINT uq_verdicts_post_model DO UPDATE SET {updates}) "
        f"INSERT INTO review_items ({names(review_cols)}) "
        f"SELECT {values(review_cols)} FROM batch WHERE queued "
        f"ON CONFLICT ON CONSTRAINT uq_review_items_post_model DO NOTHING"
    )


def _json_value(value: object) -> str:
    """Timestamps as ISO 8601 and thumbnails as base64, for the batch's JSON parameter."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot send {type(value).__name__} in a batch write")


def _batch_row(v: Verdict, outcome: Outcome) -> dict[str, Any]:
    """One post's verdict row, with its review item's columns beside it when it is queued."""
    row: dict[str, Any] = {
        "post_id": v.post_id,
        "model_id": v.model_id,
        "score": v.score,
        "threshold": v.threshold,
        "event_time": v.event_time,
        "verdict": v.verdict,
        "error_code": v.error_code,
        "scored_at": v.scored_at,
        "topic": outcome.record.topic,
        "partition": outcome.record.partition,
        "offset": outcome.record.offset,
        "role": v.role,
        "queued": outcome.review is not None,
    }
    review = outcome.review
    if review is not None:
        row |= {
            "status": "pending",
            "created_at": v.scored_at,
            "caption": review.caption,
            "image_url": review.image_url,
            "thumbnail": review.thumbnail,
            "explanation": review.explanation.as_json() if review.explanation else None,
            "author_id": review.author_id,
        }
    return row


_WRITE_BATCH = _write_batch_statement()


def alembic_config(url: str | None = None) -> Config:
    """Alembic configuration for the migrations shipped with the package."""
    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def check_schema_current(engine: sa.Engine) -> None:
    """Refuse to run against a database whose schema is not at this release's head.

    Raises:
        DatabaseUnavailable: the database cannot be reached.
        DatabaseNotMigrated: the schema is behind (or ahead of) this release.
    """
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with translated(), engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        raise DatabaseNotMigrated(
            f"database schema is at revision {current or 'none'}, this worker needs {head}: "
            "run `itmguard db upgrade`"
        )
