"""Revocable sessions against a real Postgres: signing out, disabling, enabling and a new
password end every earlier session of that moderator, at its next request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from tests.test_review_throttle import CSRF, PASSWORD, SECRET, sign_in
from worker.config import Settings
from worker.review.accounts import add_moderator, disable_moderator, set_password
from worker.review.web import create_app

pytestmark = pytest.mark.integration

COOKIE = "itmguard_review"


async def _replay(client: TestClient[Any, Any], cookie: str) -> int:
    """GET the queue page with an old session cookie only; 200 means it still works."""
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({COOKIE: cookie})
    return (await client.get("/review", allow_redirects=False)).status


def _old_cookie_after(
    engine: sa.Engine, act: Callable[[sa.Engine], None] | None
) -> tuple[int, int]:
    """Sign alice in, keep her cookie, then sign out through the page (`act` None) or run `act`;
    returns the queue page's status with the kept cookie before and after."""
    app = create_app(engine, Settings(), secret=SECRET, secure_cookies=False)

    async def run() -> tuple[int, int]:
        async with TestClient(TestServer(app)) as client:
            assert (await sign_in(client, "alice", PASSWORD)).status == 303
            cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
            before = await _replay(client, cookie)
            if act is None:
                page = await client.get("/review")
                token = CSRF.search(await page.text())
                assert token is not None
                await client.post("/logout", data={"csrf": token.group(1)}, allow_redirects=False)
            else:
                await asyncio.to_thread(act, engine)
            return before, await _replay(client, cookie)

    return asyncio.run(run())


@pytest.fixture
def alice(engine: sa.Engine) -> sa.Engine:
    add_moderator(engine, "alice", PASSWORD)
    return engine


def test_sign_out_ends_the_old_cookie(alice: sa.Engine) -> None:
    """A cookie copied before signing out no longer opens the queue afterwards."""
    assert _old_cookie_after(alice, None) == (200, 303)


def test_enabling_again_does_not_revive_old_sessions(alice: sa.Engine) -> None:
    """A moderator disabled and enabled again must sign in anew: her old cookie stays dead."""

    def disable_then_enable(engine: sa.Engine) -> None:
        disable_moderator(engine, "alice")
        disable_moderator(engine, "alice", disabled=False)

    assert _old_cookie_after(alice, disable_then_enable) == (200, 303)


def test_a_new_password_ends_old_sessions(alice: sa.Engine) -> None:
    """Setting a new password ends the sessions signed in with any earlier one."""
    assert _old_cookie_after(
        alice, lambda e: set_password(e, "alice", "another long password")
    ) == (
        200,
        303,
    )
