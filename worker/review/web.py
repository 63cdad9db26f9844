"""The review web page: aiohttp.web and server-rendered templates, no front-end build.

Moderators sign in (`worker.review.signin`) with an account made by
`itmguard review add-moderator`; who may ask for what is
`worker.review.sessions`' job, turning records into HTML is
`worker.review.rendering`'s, and headers and error pages are
`worker.review.middleware`'s. This module holds the routes, checks what they
are asked for, and serves the app.

Queue rules live in `worker.review`'s other modules; handlers call them in a
thread so the event loop never waits on Postgres; password hashes have a
thread pool of their own. Every step a handler takes is audited as `web`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
import structlog
from aiohttp import web

from worker.config import REVIEW_ORDERS, Settings
from worker.errors import (
    ConfigError,
    ItemAlreadyDecided,
    ItemHeldByOther,
    ItemNotClaimed,
    ItemNotFound,
    LeaseExpired,
    ReviewError,
)
from worker.review.inputs import MAX_PAGE, page_number, requested_item, text_filter
from worker.review.items import (
    DECISIONS,
    STATUSES,
    get_item,
    held_by,
    history,
    list_items,
    stats,
    thumbnail,
)
from worker.review.middleware import guard
from worker.review.origin import WEB
from worker.review.queue import (
    MAX_NOTE_CHARS,
    claim,
    claim_next,
    decide,
    expire_leases,
    release,
)
from worker.review.rendering import MESSAGES, TEMPLATES, image_src, render, templates
from worker.review.sessions import FORM, SESSIONS, Sessions, admit, moderator
from worker.review.signin import HASH_THREADS, SIGN_IN, SignIn, login, login_page, logout
from worker.review.throttle import DEFAULT_THROTTLE, ThrottlePolicy

__all__ = ["create_app", "serve"]

log = structlog.get_logger(__name__)

SWEEP_INTERVAL_S = 30.0
PAGE_SIZE = 50
_STATIC = {"review.js": "text/javascript", "review.css": "text/css", "favicon.svg": "image/svg+xml"}

_ENGINE = web.AppKey("engine", sa.Engine)
_SETTINGS = web.AppKey("settings", Settings)


def _redirect(path: str, **query: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"{path}?{urlencode(query)}" if query else path)


def _error_code(exc: ReviewError) -> str:
    if isinstance(exc, ItemHeldByOther):
        return "held"
    if isinstance(exc, LeaseExpired):
        return "expired"
    if isinstance(exc, ItemNotClaimed):
        return "not_claimed"
    if isinstance(exc, ItemAlreadyDecided):
        return "decided"
    return "invalid"


async def _act(item_id: int, action: Callable[[], object]) -> None:
    """Run a queue action on an item; a refusal sends the moderator back to it, told why."""
    try:
        await asyncio.to_thread(action)
    except ItemNotFound:
        raise web.HTTPNotFound() from None
    except ReviewError as exc:
        raise _redirect(f"/items/{item_id}", error=_error_code(exc)) from None


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    body = files("worker.review").joinpath("static", name).read_bytes()
    return web.Response(
        body=body,
        content_type=_STATIC[name],
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=300"},
    )


async def _home(_request: web.Request) -> web.Response:
    raise _redirect("/review")


async def _queue(request: web.Request) -> web.Response:
    engine = request.app[_ENGINE]
    held = await asyncio.to_thread(held_by, engine, moderator(request))
    if held:
        raise _redirect(f"/items/{held[0].id}")
    counts = await asyncio.to_thread(stats, engine)
    return render(
        request,
        "queue.html",
        stats=counts,
        orders=REVIEW_ORDERS,
        order=request.app[_SETTINGS].review_order,
    )


async def _next(request: web.Request) -> web.Response:
    settings = request.app[_SETTINGS]
    order = str(request[FORM].get("order", settings.review_order))
    if order not in REVIEW_ORDERS:
        order = settings.review_order
    item = await asyncio.to_thread(
        claim_next,
        request.app[_ENGINE],
        moderator(request),
        lease_s=settings.review_lease_s,
        order=order,
        origin=WEB,
    )
    if item is None:
        raise _redirect("/review", msg="empty")
    raise _redirect(f"/items/{item.id}")


async def _item(request: web.Request) -> web.Response:
    engine = request.app[_ENGINE]
    item_id = requested_item(request)
    try:
        item = await asyncio.to_thread(get_item, engine, item_id)
        audit = await asyncio.to_thread(history, engine, item_id)
    except ItemNotFound:
        raise web.HTTPNotFound(text=f"review item {item_id} does not exist\n") from None
    now = datetime.now(UTC)
    error = request.query.get("error")
    return render(
        request,
        "item.html",
        item=item,
        history=audit,
        mine=item.held_by(moderator(request), now),
        live=item.status == "claimed"
        and item.lease_expires_at is not None
        and item.lease_expires_at > now,
        image_src=image_src(item),
        error=MESSAGES.get(error or ""),
        max_note=MAX_NOTE_CHARS,
    )


async def _thumbnail(request: web.Request) -> web.Response:
    data = await asyncio.to_thread(thumbnail, request.app[_ENGINE], requested_item(request))
    if data is None:
        raise web.HTTPNotFound()
    # private: a shared cache must not keep users' pictures
    return web.Response(
        body=data, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"}
    )


async def _claim(request: web.Request) -> web.Response:
    item_id = requested_item(request)
    lease_s = request.app[_SETTINGS].review_lease_s
    engine, user = request.app[_ENGINE], moderator(request)
    await _act(item_id, partial(claim, engine, item_id, user, lease_s=lease_s, origin=WEB))
    raise _redirect(f"/items/{item_id}")


async def _release(request: web.Request) -> web.Response:
    item_id = requested_item(request)
    await _act(
        item_id, partial(release, request.app[_ENGINE], item_id, moderator(request), origin=WEB)
    )
    raise _redirect("/review", msg="released")


async def _decide(request: web.Request) -> web.Response:
    engine, user, settings = request.app[_ENGINE], moderator(request), request.app[_SETTINGS]
    item_id = requested_item(request)
    form = request[FORM]
    decision, note = str(form.get("decision", "")), str(form.get("note", ""))
    await _act(item_id, partial(decide, engine, item_id, user, decision, note, origin=WEB))
    log.info("review_decided", item_id=item_id, moderator=user, decision=decision)
    nxt = await asyncio.to_thread(
        claim_next,
        engine,
        user,
        lease_s=settings.review_lease_s,
        order=settings.review_order,
        origin=WEB,
    )
    if nxt is None:
        raise _redirect("/review", msg="decided_all")
    raise _redirect(f"/items/{nxt.id}")


async def _list(request: web.Request) -> web.Response:
    query = request.query
    filters: dict[str, Any] = {
        "status": query.get("status") or None,
        "decision": query.get("decision") or None,
        "moderator": text_filter(query, "moderator"),
        "model_id": text_filter(query, "model_id"),
        "text": text_filter(query, "q"),
    }
    if filters["status"] not in (None, *STATUSES):
        raise web.HTTPBadRequest(text="status must be pending, claimed or decided\n")
    if filters["decision"] not in (None, *DECISIONS):
        raise web.HTTPBadRequest(text="unknown decision\n")
    page = page_number(query)
    items = await asyncio.to_thread(
        list_items,
        request.app[_ENGINE],
        limit=PAGE_SIZE + 1,
        offset=(page - 1) * PAGE_SIZE,
        **filters,
    )
    kept = {k: v for k, v in query.items() if k != "page" and v}
    return render(
        request,
        "list.html",
        items=items[:PAGE_SIZE],
        filters=filters,
        page=page,
        statuses=STATUSES,
        q=query.get("q", ""),
        prev_url=f"/items?{urlencode({**kept, 'page': page - 1})}" if page > 1 else None,
        next_url=f"/items?{urlencode({**kept, 'page': page + 1})}"
        if len(items) > PAGE_SIZE and page < MAX_PAGE
        else None,
    )


def create_app(
    engine: sa.Engine,
    settings: Settings,
    *,
    secret: str,
    secure_cookies: bool = True,
    sweep_interval_s: float = SWEEP_INTERVAL_S,
    throttle: ThrottlePolicy = DEFAULT_THROTTLE,
    hash_pool: Executor | None = None,
) -> web.Application:
    """The review web application.

    Args:
        secret: the key session cookies are signed with.
        secure_cookies: mark cookies `Secure` (HTTPS only); off only for `--dev` on plain http.
        sweep_interval_s: how often lapsed leases are returned to the queue in the background.
        throttle: how failed sign-ins slow further ones down.
        hash_pool: where password hashes are checked; by default a pool of HASH_THREADS
            threads of the app's own, shut down with it.
    """
    app = web.Application(middlewares=[guard, admit], client_max_size=64 * 1024)
    app[_ENGINE] = engine
    app[_SETTINGS] = settings
    app[SESSIONS] = Sessions(engine, secret, secure=secure_cookies, idle_s=settings.review_idle_s)
    own_pool = hash_pool is None
    pool = hash_pool or ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="review-hash")
    app[SIGN_IN] = SignIn.create(engine, throttle, pool, settings.review_trusted_proxies)
    if own_pool:
        app.on_cleanup.append(lambda _app: _shutdown(pool))
    app[TEMPLATES] = templates()
    app.add_routes(
        [
            web.get("/", _home),
            web.get("/login", login_page),
            web.post("/login", login),
            web.post("/logout", logout),
            web.get("/healthz", _healthz),
            web.get("/static/{name}", _static),
            web.get("/review", _queue),
            web.post("/review/next", _next),
            web.get("/items", _list),
            web.get(r"/items/{item_id:\d+}", _item),
            web.get(r"/items/{item_id:\d+}/thumbnail", _thumbnail),
            web.post(r"/items/{item_id:\d+}/claim", _claim),
            web.post(r"/items/{item_id:\d+}/release", _release),
            web.post(r"/items/{item_id:\d+}/decide", _decide),
        ]
    )

    async def sweep(_app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(sweep_interval_s)
                try:
                    returned = await asyncio.to_thread(expire_leases, engine, origin=WEB)
                except Exception as exc:  # noqa: BLE001 - the sweep must outlive a DB outage
                    log.warning("review_sweep_failed", error=type(exc).__name__)
                    continue
                if returned:
                    log.info("review_leases_expired", items=returned)

        task = asyncio.create_task(loop())
        yield
        task.cancel()

    app.cleanup_ctx.append(sweep)
    return app


async def _shutdown(pool: Executor) -> None:
    pool.shutdown(wait=False, cancel_futures=True)


def serve(settings: Settings, *, dev: bool = False) -> None:
    """Serve the review page on ITMGUARD_REVIEW_HOST:ITMGUARD_REVIEW_PORT until SIGTERM or SIGINT.

    Raises:
        ConfigError: no ITMGUARD_REVIEW_SECRET (or _FILE) and not `dev`.
        DatabaseUnavailable, DatabaseNotMigrated: the database cannot serve the queue.
    """
    from worker.persistence import check_schema_current, create_engine

    secret = settings.review_secret
    if secret is None:
        if not dev:
            raise ConfigError(
                "ITMGUARD_REVIEW_SECRET",
                "",
                "required to sign moderators' sessions (e.g. `openssl rand -hex 32`, or a file "
                "holding one in ITMGUARD_REVIEW_SECRET_FILE); "
                "`itmguard review serve --dev` runs without one on this machine only",
            )
        secret = secrets.token_hex(32)
        log.warning(
            "review_dev_mode",
            reason="random session key, sessions end on restart; cookies not marked Secure",
        )
    engine = create_engine(settings.database_url)
    check_schema_current(engine)
    app = create_app(engine, settings, secret=secret, secure_cookies=not dev)
    log.info("review_serving", host=settings.review_host, port=settings.review_port, dev=dev)
    web.run_app(
        app, host=settings.review_host, port=settings.review_port, print=None, access_log=None
    )
    engine.dispose()
