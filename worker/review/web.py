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
from collections.abc import AsyncIterator, Mapping
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
from worker.errors import ConfigError, ItemNotFound
from worker.review import pages
from worker.review.decisions import DecisionPolicy, latest_undoable
from worker.review.inputs import (
    MAX_FILTER_CHARS,
    MAX_PAGE,
    page_number,
    requested_item,
    text_filter,
)
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
from worker.review.routing import ENGINE, SETTINGS, act, redirect
from worker.review.sessions import FORM, SESSIONS, Sessions, admit, moderator
from worker.review.signin import HASH_THREADS, SIGN_IN, SignIn, login, login_page, logout
from worker.review.throttle import DEFAULT_THROTTLE, ThrottlePolicy
from worker.review.triage import BANDS, Triage, context, pending_by_band
from worker.review.wellness import display_for

__all__ = ["create_app", "serve"]

log = structlog.get_logger(__name__)

SWEEP_INTERVAL_S = 30.0
PAGE_SIZE = 50
_STATIC = {"review.js": "text/javascript", "review.css": "text/css", "favicon.svg": "image/svg+xml"}


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
    raise redirect("/review")


async def _queue(request: web.Request) -> web.Response:
    engine, user = request.app[ENGINE], moderator(request)
    held = await asyncio.to_thread(held_by, engine, user)
    if held:
        raise redirect(f"/items/{held[0].id}")
    counts = await asyncio.to_thread(stats, engine)
    bands = await asyncio.to_thread(pending_by_band, engine)
    settings = request.app[SETTINGS]
    recent = await asyncio.to_thread(latest_undoable, engine, user, settings.review_undo_s)
    return render(
        request,
        "queue.html",
        stats=counts,
        orders=REVIEW_ORDERS,
        order=settings.review_order,
        triage=bands,
        models=sorted({row["model_id"] for row in bands}),
        bands=BANDS,
        recent=recent,
    )


def _triage(form: Mapping[str, Any]) -> Triage:
    """The part of the queue a form asks for; anything unknown means the whole queue."""
    model = str(form.get("model_id", "")).strip()
    band = str(form.get("band", ""))
    return Triage(model_id=model[:MAX_FILTER_CHARS] or None, band=band if band in BANDS else None)


def _item_url(item_id: int, triage: Triage) -> web.HTTPSeeOther:
    """To the item, keeping the part of the queue being worked for the claim after it."""
    kept = {"model_id": triage.model_id or "", "band": triage.band or ""}
    return redirect(f"/items/{item_id}", **{k: v for k, v in kept.items() if v})


async def _next(request: web.Request) -> web.Response:
    settings, form = request.app[SETTINGS], request[FORM]
    order = str(form.get("order", settings.review_order))
    if order not in REVIEW_ORDERS:
        order = settings.review_order
    item = await asyncio.to_thread(
        claim_next,
        request.app[ENGINE],
        moderator(request),
        lease_s=settings.review_lease_s,
        order=order,
        triage=(triage := _triage(form)),
        origin=WEB,
    )
    if item is None:
        raise redirect("/review", msg="empty")
    raise _item_url(item.id, triage)


async def _item(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    item_id = requested_item(request)
    try:
        item = await asyncio.to_thread(get_item, engine, item_id)
        audit = await asyncio.to_thread(history, engine, item_id)
    except ItemNotFound:
        raise web.HTTPNotFound(text=f"review item {item_id} does not exist\n") from None
    user, settings = moderator(request), request.app[SETTINGS]
    related = await asyncio.to_thread(context, engine, item_id)
    display = await asyncio.to_thread(display_for, engine, user)
    recent = await asyncio.to_thread(latest_undoable, engine, user, settings.review_undo_s)
    now = datetime.now(UTC)
    error = request.query.get("error")
    return render(
        request,
        "item.html",
        item=item,
        history=audit,
        related=related,
        display=display,
        reasons=settings.review_reasons,
        require_reason=settings.review_require_reason,
        recent=recent,
        mine=item.held_by(user, now),
        live=item.status == "claimed"
        and item.lease_expires_at is not None
        and item.lease_expires_at > now,
        image_src=image_src(item),
        triage=_triage(request.query),
        error=MESSAGES.get(error or ""),
        max_note=MAX_NOTE_CHARS,
    )


async def _thumbnail(request: web.Request) -> web.Response:
    data = await asyncio.to_thread(thumbnail, request.app[ENGINE], requested_item(request))
    if data is None:
        raise web.HTTPNotFound()
    # private: a shared cache must not keep users' pictures
    return web.Response(
        body=data, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"}
    )


async def _claim(request: web.Request) -> web.Response:
    item_id = requested_item(request)
    lease_s = request.app[SETTINGS].review_lease_s
    engine, user = request.app[ENGINE], moderator(request)
    await act(item_id, partial(claim, engine, item_id, user, lease_s=lease_s, origin=WEB))
    raise redirect(f"/items/{item_id}")


async def _release(request: web.Request) -> web.Response:
    item_id = requested_item(request)
    await act(
        item_id, partial(release, request.app[ENGINE], item_id, moderator(request), origin=WEB)
    )
    raise redirect("/review", msg="released")


async def _decide(request: web.Request) -> web.Response:
    engine, user, settings = request.app[ENGINE], moderator(request), request.app[SETTINGS]
    item_id = requested_item(request)
    form = request[FORM]
    decision, note = str(form.get("decision", "")), str(form.get("note", ""))
    reason = str(form.get("reason", "")) if decision == "confirmed_mismatch" else None
    policy = DecisionPolicy.from_settings(settings)
    await act(
        item_id,
        partial(
            decide, engine, item_id, user, decision, note, reason=reason, policy=policy, origin=WEB
        ),
    )
    log.info("review_decided", item_id=item_id, moderator=user, decision=decision)
    nxt = await asyncio.to_thread(
        claim_next,
        engine,
        user,
        lease_s=settings.review_lease_s,
        order=settings.review_order,
        triage=(triage := _triage(form)),
        origin=WEB,
    )
    if nxt is None:
        raise redirect("/review", msg="decided_all")
    raise _item_url(nxt.id, triage)


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
        request.app[ENGINE],
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
    app[ENGINE] = engine
    app[SETTINGS] = settings
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
            *pages.routes(),
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
