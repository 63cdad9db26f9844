"""Verdicts in a real Postgres: idempotent upserts, review items, error translation."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from worker.errors import DatabaseNotMigrated, DatabaseUnavailable
from worker.persistence import check_schema_current, create_engine, write_outcomes
from worker.verdicts import Outcome, Record, ReviewContent, Verdict, last_outcomes

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def _outcome(post_id: str, verdict: str, score: float | None, offset: int = 0) -> Outcome:
    code = "invalid_event" if verdict == "error" else None
    review = (
        ReviewContent(f"caption of {post_id}", None, b"\xff\xd8jpeg")
        if verdict == "mismatch"
        else None
    )
    return Outcome(
        Record(b"", topic="posts", partition=1, offset=offset),
        Verdict(post_id, "m@1", score, 0.5, verdict, code, NOW, None),  # type: ignore[arg-type]
        None,
        review,
    )


def _rows(engine: sa.Engine, table: str) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY post_id")))


def test_writes_are_idempotent_and_mismatches_are_queued(database_url: str) -> None:
    """Writing a batch twice leaves one verdict per post and one review item per mismatch."""
    engine = create_engine(database_url)
    batch = [
        _outcome("a", "match", 0.9),
        _outcome("b", "mismatch", 0.1),
        _outcome("c", "error", None),
    ]
    assert write_outcomes(engine, batch) == 3
    assert write_outcomes(engine, batch) == 3
    rows = _rows(engine, "verdicts")
    assert [(r.post_id, r.verdict, r.error_code, r.partition) for r in rows] == [
        ("a", "match", None, 1),
        ("b", "mismatch", None, 1),
        ("c", "error", "invalid_event", 1),
    ]
    queued = _rows(engine, "review_items")
    assert [(r.post_id, r.status, r.caption, r.thumbnail) for r in queued] == [
        ("b", "pending", "caption of b", b"\xff\xd8jpeg")
    ]
    engine.dispose()


def test_a_post_twice_in_one_batch_keeps_the_last(database_url: str) -> None:
    """A producer retry that puts one post twice in a batch writes one row, the later one
    (as `last_outcomes` chooses), and queues a review item only where that later verdict is a
    mismatch; handing the writer both outcomes of one post is refused."""
    engine = create_engine(database_url)
    batch = [
        _outcome("a", "match", 0.9, 1),
        _outcome("a", "match", 0.8, 2),
        _outcome("b", "mismatch", 0.1, 3),
        _outcome("b", "match", 0.7, 4),
        _outcome("c", "mismatch", 0.2, 5),
        _outcome("c", "mismatch", 0.3, 6),
    ]
    with pytest.raises(ValueError, match="last_outcomes"):
        write_outcomes(engine, batch)
    assert _rows(engine, "verdicts") == []
    assert write_outcomes(engine, last_outcomes(batch)) == 3
    assert [(r.post_id, r.score, r.offset) for r in _rows(engine, "verdicts")] == [
        ("a", 0.8, 2),
        ("b", 0.7, 4),
        ("c", 0.3, 6),
    ]
    assert [(r.post_id, r.score) for r in _rows(engine, "review_items")] == [("c", 0.3)]
    engine.dispose()


def test_outcomes_without_post_id_write_nothing(database_url: str) -> None:
    """A dead letter with no post_id has no verdict row to write."""
    engine = create_engine(database_url)
    letter_only = Outcome(Record(b"{", topic="posts"), None, {"reason": "invalid_json"})
    assert write_outcomes(engine, [letter_only]) == 0
    assert _rows(engine, "verdicts") == []
    engine.dispose()


def test_unreachable_database_raises_database_unavailable() -> None:
    """A refused connection surfaces as DatabaseUnavailable, not a driver error."""
    from worker.demo.embedded import free_port

    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(DatabaseUnavailable):
        write_outcomes(engine, [_outcome("a", "match", 0.9)])


def test_unmigrated_database_is_refused(database_url: str) -> None:
    """A database behind this release's schema stops the worker with the command to run."""
    from alembic import command

    from worker.persistence import alembic_config

    command.downgrade(alembic_config(database_url), "base")
    engine = create_engine(database_url)
    with pytest.raises(DatabaseNotMigrated, match="itmguard db upgrade"):
        check_schema_current(engine)
    command.upgrade(alembic_config(database_url), "head")
    check_schema_current(engine)
    engine.dispose()


def test_a_batch_is_written_in_one_round_trip(database_url: str, tmp_path: Path) -> None:
    """Verdicts and review items of a batch reach Postgres in one request and one reply: the
    client's protocol trace shows a single Sync or Query, no BEGIN and no COMMIT."""
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    with engine.connect():
        pass  # the dialect's first-connection queries, before the trace starts
    trace = (tmp_path / "libpq.trace").open("w")

    @sa.event.listens_for(engine, "connect")
    def traced(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.pgconn.trace(trace.fileno())

    batch = [_outcome(f"p{i}", "mismatch" if i % 3 else "match", 0.1 * i) for i in range(9)]
    assert write_outcomes(engine, batch) == 9
    sa.event.remove(engine, "connect", traced)
    trace.close()
    # libpq's trace: a timestamp, F (sent) or B (received), the length, the message
    lines = [line.split("\t") for line in (tmp_path / "libpq.trace").read_text().splitlines()]
    sent = [fields[3] for fields in lines if fields[1] == "F"]
    requests = [m for m in sent if m in ("Sync", "Query")]
    assert len(requests) == 1, sent
    assert not any("BEGIN" in m or "COMMIT" in m for m in sent), sent
    assert len(_rows(engine, "verdicts")) == 9 and len(_rows(engine, "review_items")) == 6


def test_the_author_of_a_queued_post_is_stored_with_its_review_item(engine: sa.Engine) -> None:
    """A mismatch whose event named its author keeps the author on the review item, where
    the review page counts the author's recent flags."""
    outcome = _outcome("p1", "mismatch", 0.1)
    assert outcome.review is not None
    authored = replace(outcome, review=replace(outcome.review, author_id="user-7"))
    write_outcomes(engine, [authored])
    assert [r.author_id for r in _rows(engine, "review_items")] == ["user-7"]
