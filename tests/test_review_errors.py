"""The review page's errors: bad input gets 400 with a message, a database that cannot be
reached a 503 page with Retry-After, and no SQL or its parameters ever reach a log."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from tests.test_review_throttle import PASSWORD, SECRET, sign_in
from worker.config import Settings
from worker.review import web as review_web
from worker.review.accounts import add_moderator
from worker.review.sessions import Session, SessionCodec
from worker.review.web import create_app

pytestmark = pytest.mark.integration


def test_bad_list_filters_get_400_with_a_message(engine: sa.Engine) -> None:
    """A NUL in a filter, a huge or non-numeric page, or a huge item id is refused with 400
    (404 for the id) and a message, never a 500."""
    add_moderator(engine, "alice", PASSWORD)
    app = create_app(engine, Settings(), secret=SECRET, secure_cookies=False)

    async def run() -> list[tuple[int, str]]:
        async with TestClient(TestServer(app)) as client:
            assert (await sign_in(client, "alice", PASSWORD)).status == 303
            answers = []
            for path in (
                "/items?q=a%00b",
                "/items?moderator=%00",
                "/items?model_id=" + "m" * 500,
                "/items?page=99999999999999999999",
                "/items?page=two",
                "/items/99999999999999999999",
                "/items/99999999999999999999/thumbnail",
            ):
                response = await client.get(path)
                answers.append((response.status, await response.text()))
            return answers

    answers = asyncio.run(run())
    assert [status for status, _ in answers] == [400] * 5 + [404] * 2
    assert "cannot contain NUL" in answers[0][1]
    assert "at most 200 characters" in answers[2][1]
    assert "page must be a whole number from 1 to" in answers[3][1]


def test_an_unreachable_database_gets_a_503_page_with_retry_after() -> None:
    """While Postgres cannot be reached, a signed-in page and a sign-in get 503 with
    Retry-After and a page saying so, not a bare 500 with a traceback."""
    engine = sa.create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/unreachable", connect_args={"connect_timeout": 2}
    )
    app = create_app(engine, Settings(), secret=SECRET, secure_cookies=False)
    now = time.time()
    cookie = SessionCodec(SECRET).dumps(
        Session(csrf="t", user="alice", issued=now, seen=now, generation=0)
    )

    async def run() -> list[tuple[int, str | None, str]]:
        async with TestClient(TestServer(app)) as client:
            client.session.cookie_jar.update_cookies({"itmguard_review": cookie})
            page = await client.get("/review")
            client.session.cookie_jar.clear()
            login = await sign_in(client, "alice", PASSWORD)
            return [(r.status, r.headers.get("Retry-After"), await r.text()) for r in (page, login)]

    for status, retry_after, body in asyncio.run(run()):
        assert (status, retry_after) == (503, "5")
        assert "database cannot be reached" in body and "Traceback" not in body
    engine.dispose()


def test_a_failed_query_logs_neither_its_sql_nor_its_parameters(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A database error inside a page gives a plain 500 page; the log names the error's type,
    never the statement or the caption text it was run with."""
    add_moderator(engine, "alice", PASSWORD)

    def failing(*_: Any, **__: Any) -> None:
        raise sa.exc.DataError(
            "SELECT * FROM review_items WHERE caption ILIKE %(text)s",
            {"text": "%a private caption%"},
            ValueError("bad text"),
        )

    monkeypatch.setattr(review_web, "list_items", failing)
    app = create_app(engine, Settings(), secret=SECRET, secure_cookies=False)

    async def run() -> tuple[int, str]:
        async with TestClient(TestServer(app)) as client:
            assert (await sign_in(client, "alice", PASSWORD)).status == 303
            response = await client.get("/items?q=a+private+caption")
            return response.status, await response.text()

    with caplog.at_level(logging.DEBUG), capture_logs() as events:
        status, body = asyncio.run(run())
    assert status == 500 and "Something went wrong" in body
    # the test server's access log is left out: `review serve` runs without one
    records = [r.getMessage() for r in caplog.records if r.name != "aiohttp.access"]
    logged = repr(records) + repr(events)
    assert "private caption" not in logged and "ILIKE" not in logged and "ILIKE" not in body
    assert {"event": "review_request_failed", "path": "/items", "error": "DataError"} in [
        {k: e.get(k) for k in ("event", "path", "error")} for e in events
    ]
