"""The review page's liveness route, without a browser, a session or a database."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from worker.config import Settings
from worker.review.web import create_app


def test_healthz_answers_without_a_session_or_a_database() -> None:
    """GET /healthz is 200 "ok" with no cookie and a database that cannot be reached, while
    a private page without a session is sent to sign in."""
    engine = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/unreachable")
    app = create_app(engine, Settings(), secret="s" * 48)

    async def probe() -> tuple[int, str, int, str]:
        async with TestClient(TestServer(app)) as client:
            health = await client.get("/healthz", allow_redirects=False)
            page = await client.get("/items", allow_redirects=False)
            return health.status, await health.text(), page.status, page.headers["Location"]

    assert asyncio.run(probe()) == (200, "ok\n", 303, "/login?next=/items")
