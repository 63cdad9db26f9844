"""`itmguard demo --review`: the review page over the demo's own database, until Ctrl-C.

The demo's mismatches are in the review queue like any worker's; this serves
the moderators' page for them on this machine, with a demo moderator account
whose password is new on every run, so a newcomer sees both sides of the
same posts. Sessions are signed with a random key and cookies are not marked
Secure, as with `itmguard review serve --dev`: plain http on loopback only.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

import sqlalchemy as sa
from aiohttp import web

from worker.config import Settings
from worker.errors import ModeratorExists
from worker.review.accounts import add_moderator, set_password
from worker.review.web import create_app

__all__ = ["DEMO_MODERATOR", "serve_review"]

DEMO_MODERATOR = "demo"


def demo_account(engine: sa.Engine) -> str:
    """A fresh random password for the demo moderator, whose account is made on first use."""
    password = secrets.token_urlsafe(12)
    try:
        add_moderator(engine, DEMO_MODERATOR, password)
    except ModeratorExists:
        set_password(engine, DEMO_MODERATOR, password)
    return password


def serve_review(
    database_url: str, port: int, echo: Callable[[str], None], *, host: str = "127.0.0.1"
) -> None:
    """Serve the review page on `host`:`port` (0: any free port) until Ctrl-C or SIGTERM."""
    engine = sa.create_engine(database_url)
    try:
        password = demo_account(engine)
        settings = Settings(database_url=database_url, review_host=host, review_port=port)
        app = create_app(engine, settings, secret=secrets.token_hex(32), secure_cookies=False)
        try:
            asyncio.run(_serve(app, host, port, password, echo))
        except KeyboardInterrupt:
            echo("review page: stopping")
    finally:
        engine.dispose()


async def _serve(
    app: web.Application, host: str, port: int, password: str, echo: Callable[[str], None]
) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        echo(f"review page: http://{host}:{bound}/review")
        echo(f"  sign in as {DEMO_MODERATOR} with password {password}  (new on every run)")
        echo("  Ctrl-C stops the page, the worker, the broker and the database")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
