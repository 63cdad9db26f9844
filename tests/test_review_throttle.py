"""Sign-in throttling against a real Postgres: backoff with 429 and Retry-After, the lockout an
admin lifts, the client address behind a proxy, and hashing on a pool of its own."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher
from click.testing import CliRunner

from worker.cli import main
from worker.config import Settings
from worker.review import accounts
from worker.review.accounts import add_moderator
from worker.review.signin import client_address
from worker.review.throttle import ThrottlePolicy
from worker.review.web import create_app

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
SECRET = "s" * 48
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def alice(engine: sa.Engine) -> sa.Engine:
    """The test database with moderator alice."""
    add_moderator(engine, "alice", PASSWORD)
    return engine


def serve(
    engine: sa.Engine,
    check: Callable[[TestClient[Any, Any]], Awaitable[Any]],
    settings: Settings | None = None,
    **kw: Any,
) -> Any:
    """Run `check` against the review app on a test server; returns what it returns."""
    app = create_app(engine, settings or Settings(), secret=SECRET, secure_cookies=False, **kw)

    async def run() -> Any:
        async with TestClient(TestServer(app)) as client:
            return await check(client)

    return asyncio.run(run())


async def sign_in(client: TestClient[Any, Any], user: str, password: str, **headers: str) -> Any:
    """POST the sign-in form as a browser would, with the page's CSRF token."""
    page = await client.get("/login")
    match = CSRF.search(await page.text())
    assert match is not None
    form = {"username": user, "password": password, "csrf": match.group(1)}
    return await client.post("/login", data=form, headers=headers, allow_redirects=False)


def _from(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def test_wrong_passwords_back_off_with_429_and_retry_after(alice: sa.Engine) -> None:
    """Five wrong passwords get 401; the sixth attempt, even with the right password, gets 429
    with Retry-After and costs no hash; once the wait is over the right password works."""

    async def check(client: TestClient[Any, Any]) -> tuple[list[int], str, int]:
        statuses = [
            (await sign_in(client, "alice", f"wrong password {i}")).status for i in range(5)
        ]
        blocked = await sign_in(client, "alice", PASSWORD)
        statuses.append(blocked.status)
        assert "Too many failed sign-ins" in await blocked.text()
        with alice.begin() as conn:  # the wait runs out
            conn.execute(sa.text("UPDATE review_signin_throttle SET blocked_until = now()"))
        after = await sign_in(client, "alice", PASSWORD)
        return statuses, blocked.headers["Retry-After"], after.status

    statuses, retry_after, after = serve(alice, check)
    assert statuses == [401] * 5 + [429]
    assert int(retry_after) >= 1
    assert after == 303


def test_a_locked_account_waits_for_an_admin(alice: sa.Engine) -> None:
    """After ten failures the account is locked: the right password gets 429 until
    `itmguard review unlock-moderator alice` lifts the lock."""
    policy = ThrottlePolicy(account_free=100, address_free=100, lockout_after=10)

    async def attempts(client: TestClient[Any, Any]) -> list[int]:
        wrong = [(await sign_in(client, "alice", f"wrong password {i}")).status for i in range(10)]
        return [*wrong, (await sign_in(client, "alice", PASSWORD)).status]

    statuses = serve(alice, attempts, throttle=policy)
    assert statuses == [401] * 10 + [429]
    url = alice.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(
        main, ["review", "unlock-moderator", "alice"], env={"ITMGUARD_DATABASE_URL": url}
    )
    assert result.exit_code == 0 and "moderator alice unlocked" in result.output

    async def right(client: TestClient[Any, Any]) -> int:
        return int((await sign_in(client, "alice", PASSWORD)).status)

    assert serve(alice, right, throttle=policy) == 303


def test_one_address_is_slowed_down_across_names(alice: sa.Engine) -> None:
    """Guessing many names from one address trips the address's backoff; behind a trusted
    proxy the address is the client's from X-Forwarded-For, so other clients go on."""
    policy = ThrottlePolicy(account_free=100, address_free=3)

    async def check(client: TestClient[Any, Any]) -> tuple[list[int], int]:
        spray = [
            (await sign_in(client, f"user{i}", "wrong password", **_from("203.0.113.9"))).status
            for i in range(4)
        ]
        other = await sign_in(client, "alice", PASSWORD, **_from("198.51.100.7"))
        return spray, other.status

    proxied = Settings(review_trusted_proxies=("127.0.0.1",))
    assert serve(alice, check, proxied, throttle=policy) == ([401, 401, 401, 429], 303)


def test_client_address_trusts_only_listed_proxies() -> None:
    """X-Forwarded-For counts only when the peer is a trusted proxy, and only its nearest
    untrusted hop: a client cannot forge its way past the throttle."""
    from ipaddress import ip_network

    proxy = (ip_network("10.0.0.0/8"),)
    assert client_address("203.0.113.9", "198.51.100.1", proxy) == "203.0.113.9"
    assert client_address("10.0.0.2", "1.2.3.4, 198.51.100.1", proxy) == "198.51.100.1"
    assert client_address("10.0.0.2", "198.51.100.1, 10.0.0.3", proxy) == "198.51.100.1"
    assert client_address("10.0.0.2", None, proxy) == "10.0.0.2"
    assert client_address("10.0.0.2", "1.2.3.4", ()) == "10.0.0.2"


def test_password_hashes_are_checked_on_their_own_pool(
    alice: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sign-in hashing runs on the app's hash pool, not the thread pool database calls use,
    so a burst of sign-ins cannot queue in front of moderators' pages."""
    threads: list[str] = []

    class Spy(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            threads.append(threading.current_thread().name)
            return super().verify(hash, password)

    monkeypatch.setattr(accounts, "_HASHER", Spy())
    pool = ThreadPoolExecutor(1, thread_name_prefix="hash-pool-under-test")

    async def check(client: TestClient[Any, Any]) -> list[int]:
        return [(await sign_in(client, "alice", p)).status for p in ("wrong password", PASSWORD)]

    try:
        assert serve(alice, check, hash_pool=pool) == [401, 303]
    finally:
        pool.shutdown()
    assert len(threads) == 2
    assert all(name.startswith("hash-pool-under-test") for name in threads), threads


def test_parallel_guesses_cannot_slip_past_the_count(alice: sa.Engine) -> None:
    """Twenty wrong passwords sent at once: each is counted before its hash is checked, so
    only the five free ones are checked and the other fifteen get 429."""

    async def check(client: TestClient[Any, Any]) -> list[int]:
        answers = await asyncio.gather(
            *(sign_in(client, "alice", f"wrong password {i}") for i in range(20))
        )
        return sorted(answer.status for answer in answers)

    assert serve(alice, check) == [401] * 5 + [429] * 15
