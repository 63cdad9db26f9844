"""Sign-in throttling and a moderator's page latency during a burst of wrong sign-ins.

Serves the review page on loopback over a scratch database and prints:

- how many wrong passwords in a row one client gets before 429;
- the latency of a signed-in moderator's queue page (GET /review, every
  100 ms) alone, and while an attacker sends wrong sign-ins at `--rate` per
  second, in three set-ups: password hashes on the thread pool the database
  calls use and no throttle (how the page was before), hashes on their own
  pool with the attack spread over many names and addresses so the throttle
  cannot bite (the pool alone), and one attacker as the throttle sees it.

    .venv/bin/python -m benchmarks.signin_burst [--seconds 8] [--rate 8]

It creates and drops a database on ITMGUARD_TEST_ADMIN_DATABASE_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiohttp import web

from worker.config import Settings
from worker.logs import configure_logging
from worker.persistence import alembic_config, create_engine
from worker.review.accounts import add_moderator
from worker.review.throttle import DEFAULT_THROTTLE, ThrottlePolicy
from worker.review.web import create_app

ADMIN_URL = os.environ.get(
    "ITMGUARD_TEST_ADMIN_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
PASSWORD = "correct horse battery"
NO_THROTTLE = ThrottlePolicy(account_free=10**6, address_free=10**6, lockout_after=10**6)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@contextmanager
def scratch_database() -> Iterator[sa.Engine]:
    """A migrated database with moderators alice and bob, dropped afterwards."""
    from alembic import command

    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"itmguard_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        command.upgrade(alembic_config(url), "head")
        engine = create_engine(url)
        for user in ("alice", "bob"):
            add_moderator(engine, user, PASSWORD)
        yield engine
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def serving(engine: sa.Engine, policy: ThrottlePolicy, *, shared_pool: bool) -> Iterator[str]:
    """The review app on a loopback port in a thread of its own; yields its URL. With
    `shared_pool`, password hashes run on the loop's default executor, as database calls do."""
    ready, stop, url = threading.Event(), threading.Event(), []

    async def main() -> None:
        pool: Executor | None = None
        if shared_pool:
            pool = ThreadPoolExecutor()  # asyncio's own default size
            asyncio.get_running_loop().set_default_executor(pool)
        app = create_app(
            engine,
            Settings(review_trusted_proxies=("127.0.0.1",)),
            secret="b" * 48,
            secure_cookies=False,
            throttle=policy,
            hash_pool=pool,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        url.append(f"http://{host}:{port}")
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    ready.wait(30)
    try:
        yield url[0]
    finally:
        stop.set()
        thread.join(30)


async def _csrf(session: aiohttp.ClientSession, base: str) -> str:
    async with session.get(f"{base}/login") as response:
        match = CSRF.search(await response.text())
    assert match is not None
    return match.group(1)


async def _sign_in(
    session: aiohttp.ClientSession, base: str, user: str, password: str, csrf: str, **headers: str
) -> int:
    form = {"username": user, "password": password, "csrf": csrf}
    async with session.post(
        f"{base}/login", data=form, headers=headers, allow_redirects=False
    ) as response:
        await response.read()
        return response.status


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def attempts_until_429(base: str) -> int:
    """Wrong passwords for one account from one client, one after another, until a 429."""
    async with _client() as client:
        csrf = await _csrf(client, base)
        for attempt in range(1, 51):
            if await _sign_in(client, base, "alice", "wrong password", csrf) == 429:
                return attempt
    return -1


async def page_latency(base: str, seconds: float, rate: float, spread: bool | None) -> list[float]:
    """Queue-page latencies (ms) for bob over `seconds`, with wrong sign-ins at `rate` per
    second meanwhile (None: no attack): from many names and addresses (`spread`) or one."""
    async with _client() as moderator, _client() as attacker:
        await _sign_in(moderator, base, "bob", PASSWORD, await _csrf(moderator, base))
        csrf = await _csrf(attacker, base)
        attacks: list[asyncio.Task[int]] = []
        latencies: list[float] = []
        deadline = time.monotonic() + seconds
        next_attack = time.monotonic()
        while time.monotonic() < deadline:
            while spread is not None and time.monotonic() >= next_attack:
                n = len(attacks)
                user, address = (
                    (f"guess{n}", f"198.51.{n // 250}.{n % 250}")
                    if spread
                    else (
                        "alice",
                        "203.0.113.9",
                    )
                )
                attacks.append(
                    asyncio.create_task(
                        _sign_in(
                            attacker,
                            base,
                            user,
                            "wrong password",
                            csrf,
                            **{"X-Forwarded-For": address},
                        )
                    )
                )
                next_attack += 1 / rate
            started = time.perf_counter()
            async with moderator.get(f"{base}/review", allow_redirects=False) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.1)
        await asyncio.gather(*attacks)
    return latencies


def _summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[max(0, round(len(ordered) * 0.95) - 1)]
    return (
        f"median {statistics.median(ordered):7.1f} ms  p95 {p95:7.1f} ms  "
        f"max {ordered[-1]:7.1f} ms  ({len(ordered)} requests)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=8.0, help="wrong sign-ins per second")
    args = parser.parse_args()
    configure_logging("warning")
    runs: list[tuple[str, ThrottlePolicy, bool, bool | None]] = [
        ("no attack", DEFAULT_THROTTLE, False, None),
        ("before: shared pool, no throttle", NO_THROTTLE, True, True),
        ("after: own pool, spread attack", DEFAULT_THROTTLE, False, True),
        ("after: own pool, one attacker", DEFAULT_THROTTLE, False, False),
    ]
    with scratch_database() as engine:
        with serving(engine, DEFAULT_THROTTLE, shared_pool=False) as base:
            print(f"wrong sign-ins until 429: {asyncio.run(attempts_until_429(base))}")
        for label, policy, shared, spread in runs:
            with engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM review_signin_throttle"))
            with serving(engine, policy, shared_pool=shared) as base:
                got: Any = asyncio.run(page_latency(base, args.seconds, args.rate, spread))
            print(f"{label:34s} {_summary(got)}")


if __name__ == "__main__":
    main()
