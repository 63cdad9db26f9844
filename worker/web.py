"""The review web page: aiohttp.web and server-rendered Jinja2 templates, no front-end build.

Moderators sign in with an account made by `itmguard review add-moderator`.
Sessions are HMAC-SHA256-signed cookies (key from `ITMGUARD_REVIEW_SECRET`)
holding the moderator's name, a CSRF token, the time of sign-in and a
fingerprint of the password hash, so a changed password or a disabled account
ends every session at its next request. Every route but sign-in, `/healthz`
and the two static files needs a session; every POST needs the session's
CSRF token in its form. Templates autoescape everything, and the Content
Security Policy admits scripts from this server's own static file only.

Queue rules live in `worker.review`; handlers call it in a thread so the
event loop never waits on Postgres or on a password hash.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
import sqlalchemy as sa
import structlog
from aiohttp import web
from multidict import MultiDictProxy

from worker import review
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

__all__ = ["SESSION_MAX_AGE_S", "Session", "SessionCodec", "create_app", "serve"]

log = structlog.get_logger(__name__)

SESSION_MAX_AGE_S = 12 * 3600
"""A session lasts one shift; then the moderator signs in again."""
SWEEP_INTERVAL_S = 30.0
PAGE_SIZE = 50
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: http:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_STATIC = {"review.js": "text/javascript", "review.css": "text/css",
           "favicon.svg": "image/svg+xml"}
_MESSAGES = {
    "empty": "The queue is empty: nothing is waiting for review.",
    "released": "Item released back to the queue.",
    "decided_all": "Decision recorded. The queue is empty.",
    "held": "Another moderator holds this item.",
    "expired": "Your lease on this item ran out, so it went back to the queue. Claim it again.",
    "not_claimed": "You do not hold this item: claim it first.",
    "decided": "This item already has its decision.",
    "invalid": "That decision or note was not accepted.",
}

_ENGINE = web.AppKey("engine", sa.Engine)
_SETTINGS = web.AppKey("settings", Settings)
_TEMPLATES = web.AppKey("templates", jinja2.Environment)
_SECURE = web.AppKey("secure", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Session:
    """What the session cookie carries."""

    csrf: str
    user: str | None = None
    issued: float = 0.0
    fingerprint: str | None = None


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "replace")


class SessionCodec:
    """Signs and checks session cookies with HMAC-SHA256 under a key derived from the secret."""

    def __init__(self, secret: str, *, max_age_s: float = SESSION_MAX_AGE_S) -> None:
        self._key = hashlib.sha256(b"itmguard-review-session\0" + secret.encode()).digest()
        self.max_age_s = max_age_s

    def _sign(self, data: bytes) -> str:
        mac = hmac.new(self._key, data, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def dumps(self, session: Session) -> str:
        payload = json.dumps(
            {"c": session.csrf, "u": session.user, "t": session.issued, "p": session.fingerprint},
            separators=(",", ":"),
        ).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._sign(body.encode())}"

    def loads(self, value: str | None, *, now: float | None = None) -> Session | None:
        """The session in `value`, or None if it is forged, malformed or older than max age."""
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(_bytes(mac), _bytes(self._sign(_bytes(body)))):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            session = Session(csrf=str(data["c"]), user=data["u"], issued=float(data["t"]),
                              fingerprint=data["p"])
        except (ValueError, KeyError, TypeError):
            return None
        if (now if now is not None else time.time()) - session.issued > self.max_age_s:
            return None
        return session

    def fingerprint(self, password_hash: str) -> str:
        """A short keyed digest of the password hash: a new password ends old sessions."""
        return self._sign(b"pw\0" + password_hash.encode())[:22]


_CODEC = web.AppKey("codec", SessionCodec)
_SESSION = web.RequestKey("session", Session)
_NEW_SESSION = web.RequestKey("set_session", Session)
_FORM: web.RequestKey[MultiDictProxy[Any]] = web.RequestKey("form", MultiDictProxy)


def _cookie_name(secure: bool) -> str:
    # the __Host- prefix makes browsers insist on Secure, Path=/ and no Domain
    return "__Host-itmguard_review" if secure else "itmguard_review"


def _new_session(user: str | None = None, fingerprint: str | None = None) -> Session:
    return Session(csrf=secrets.token_urlsafe(32), user=user, issued=time.time(),
                   fingerprint=fingerprint)


def _safe_next(target: str | None) -> str:
    """Only a path on this site: no scheme, host, `//` or backslash (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/review"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/review"
    return target


async def _run(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(func, *args, **kwargs)


# --- middlewares -------------------------------------------------------------------------


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _protect(request, exc.headers)
        log.debug("review_request", method=request.method, path=request.path,
                  status=exc.status, ms=round((time.monotonic() - started) * 1000, 1))
        raise
    _protect(request, response.headers)
    log.debug("review_request", method=request.method, path=request.path,
              status=response.status, ms=round((time.monotonic() - started) * 1000, 1))
    return response


def _protect(request: web.Request, headers: Any) -> None:
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    if not request.path.startswith("/static/"):
        headers["Cache-Control"] = "no-store"


@web.middleware
async def _sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/healthz" or request.path.startswith("/static/"):
        return await handler(request)  # no session: nothing there is private
    app = request.app
    codec, secure = app[_CODEC], app[_SECURE]
    session = codec.loads(request.cookies.get(_cookie_name(secure)))
    if session is not None and session.user is not None:
        moderator = await _run(review.get_moderator, app[_ENGINE], session.user)
        if (moderator is None or moderator.disabled
                or session.fingerprint != codec.fingerprint(moderator.password_hash)):
            session = None
    public = request.path == "/login"
    if session is None or (session.user is None and not public):
        if not public:
            if request.method in ("GET", "HEAD"):
                query = urlencode({"next": request.path_qs})
                raise web.HTTPSeeOther(f"/login?{query}")
            raise web.HTTPUnauthorized(text="sign in first\n")
        if session is None:
            session = _new_session()
            request[_NEW_SESSION] = session
    request[_SESSION] = session
    if request.method == "POST":
        form = await request.post()
        token = form.get("csrf")
        if not isinstance(token, str) or not hmac.compare_digest(_bytes(token),
                                                                  _bytes(session.csrf)):
            raise web.HTTPForbidden(text="CSRF token missing or wrong: reload the page\n")
        request[_FORM] = form
    response = await handler(request)
    new = request.get(_NEW_SESSION)
    if new is not None:
        response.set_cookie(
            _cookie_name(secure), codec.dumps(new), max_age=SESSION_MAX_AGE_S, path="/",
            secure=secure, httponly=True, samesite="Lax",
        )
    return response


# --- rendering ---------------------------------------------------------------------------


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("worker", "templates/review"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["age"] = _age
    env.filters["image_src"] = _image_src
    env.filters["human"] = lambda s: s.replace("_", " ")
    return env


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _image_src(item: review.Item) -> str | None:
    if item.has_thumbnail:
        return f"/items/{item.id}/thumbnail"
    if item.image_url and urlsplit(item.image_url).scheme in ("http", "https"):
        return item.image_url
    return None


def _render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    session: Session = request[_SESSION]
    message = request.query.get("msg")
    html = request.app[_TEMPLATES].get_template(name).render(
        user=session.user, csrf=session.csrf, message=_MESSAGES.get(message or ""),
        decisions=review.DECISIONS, **context,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _item_id(request: web.Request) -> int:
    try:
        return int(request.match_info["item_id"])
    except ValueError:
        raise web.HTTPNotFound() from None


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


# --- handlers ----------------------------------------------------------------------------


async def _login_page(request: web.Request) -> web.Response:
    session: Session = request[_SESSION]
    if session.user is not None:
        raise _redirect(_safe_next(request.query.get("next")))
    return _render(request, "login.html", next=_safe_next(request.query.get("next")),
                   error=None, username="")


async def _login(request: web.Request) -> web.Response:
    form = request[_FORM]
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    moderator = await _run(review.authenticate, request.app[_ENGINE], username, password)
    if moderator is None:
        log.info("review_sign_in_refused")
        return _render(request, "login.html", status=401, next=target,
                       error="Wrong username or password.", username=username)
    log.info("review_signed_in", moderator=moderator.username)
    session = _new_session(moderator.username,
                           request.app[_CODEC].fingerprint(moderator.password_hash))
    raise _with_cookie(request, _redirect(target), session)


def _with_cookie(request: web.Request, response: web.HTTPException,
                 session: Session) -> web.HTTPException:
    # a raised redirect skips the session middleware's tail, so the cookie is set here
    secure = request.app[_SECURE]
    response.set_cookie(
        _cookie_name(secure), request.app[_CODEC].dumps(session), max_age=SESSION_MAX_AGE_S,
        path="/", secure=secure, httponly=True, samesite="Lax",
    )
    return response


async def _logout(request: web.Request) -> web.Response:
    raise _with_cookie(request, _redirect("/login"), _new_session())


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    body = files("worker").joinpath("templates", "review", name).read_bytes()
    return web.Response(body=body, content_type=_STATIC[name], charset="utf-8",
                        headers={"Cache-Control": "public, max-age=300"})


async def _home(_request: web.Request) -> web.Response:
    raise _redirect("/review")


async def _queue(request: web.Request) -> web.Response:
    engine, user = request.app[_ENGINE], request[_SESSION].user
    held = await _run(review.held_by, engine, user)
    if held:
        raise _redirect(f"/items/{held[0].id}")
    stats = await _run(review.stats, engine)
    return _render(request, "queue.html", stats=stats, orders=REVIEW_ORDERS,
                   order=request.app[_SETTINGS].review_order)


async def _next(request: web.Request) -> web.Response:
    settings = request.app[_SETTINGS]
    order = str(request[_FORM].get("order", settings.review_order))
    if order not in REVIEW_ORDERS:
        order = settings.review_order
    item = await _run(review.claim_next, request.app[_ENGINE], request[_SESSION].user,
                      lease_s=settings.review_lease_s, order=order)
    if item is None:
        raise _redirect("/review", msg="empty")
    raise _redirect(f"/items/{item.id}")


async def _item(request: web.Request) -> web.Response:
    engine, user = request.app[_ENGINE], request[_SESSION].user
    item_id = _item_id(request)
    try:
        item = await _run(review.get_item, engine, item_id)
        audit = await _run(review.history, engine, item_id)
    except ItemNotFound:
        raise web.HTTPNotFound(text=f"review item {item_id} does not exist\n") from None
    now = datetime.now(UTC)
    error = request.query.get("error")
    return _render(
        request, "item.html", item=item, history=audit, mine=item.held_by(user, now),
        live=item.status == "claimed" and item.lease_expires_at is not None
        and item.lease_expires_at > now,
        image_src=_image_src(item), error=_MESSAGES.get(error or ""),
        max_note=review.MAX_NOTE_CHARS,
    )


async def _thumbnail(request: web.Request) -> web.Response:
    data = await _run(review.thumbnail, request.app[_ENGINE], _item_id(request))
    if data is None:
        raise web.HTTPNotFound()
    return web.Response(body=data, content_type="image/jpeg")


async def _claim(request: web.Request) -> web.Response:
    item_id = _item_id(request)
    try:
        await _run(review.claim, request.app[_ENGINE], item_id, request[_SESSION].user,
                   lease_s=request.app[_SETTINGS].review_lease_s)
    except ItemNotFound:
        raise web.HTTPNotFound() from None
    except ReviewError as exc:
        raise _redirect(f"/items/{item_id}", error=_error_code(exc)) from None
    raise _redirect(f"/items/{item_id}")


async def _release(request: web.Request) -> web.Response:
    item_id = _item_id(request)
    try:
        await _run(review.release, request.app[_ENGINE], item_id, request[_SESSION].user)
    except ItemNotFound:
        raise web.HTTPNotFound() from None
    except ReviewError as exc:
        raise _redirect(f"/items/{item_id}", error=_error_code(exc)) from None
    raise _redirect("/review", msg="released")


async def _decide(request: web.Request) -> web.Response:
    engine, user, settings = request.app[_ENGINE], request[_SESSION].user, request.app[_SETTINGS]
    item_id = _item_id(request)
    form = request[_FORM]
    decision, note = str(form.get("decision", "")), str(form.get("note", ""))
    try:
        await _run(review.decide, engine, item_id, user, decision, note)
    except ItemNotFound:
        raise web.HTTPNotFound() from None
    except ReviewError as exc:
        raise _redirect(f"/items/{item_id}", error=_error_code(exc)) from None
    log.info("review_decided", item_id=item_id, moderator=user, decision=decision)
    nxt = await _run(review.claim_next, engine, user, lease_s=settings.review_lease_s,
                     order=settings.review_order)
    if nxt is None:
        raise _redirect("/review", msg="decided_all")
    raise _redirect(f"/items/{nxt.id}")


async def _list(request: web.Request) -> web.Response:
    query = request.query
    filters = {
        "status": query.get("status") or None,
        "decision": query.get("decision") or None,
        "moderator": query.get("moderator", "").strip() or None,
        "model_id": query.get("model_id", "").strip() or None,
        "text": query.get("q", "").strip() or None,
    }
    if filters["status"] not in (None, *review.STATUSES):
        raise web.HTTPBadRequest(text="status must be pending, claimed or decided\n")
    if filters["decision"] not in (None, *review.DECISIONS):
        raise web.HTTPBadRequest(text="unknown decision\n")
    try:
        page = max(1, int(query.get("page", "1")))
    except ValueError:
        page = 1
    items = await _run(review.list_items, request.app[_ENGINE], limit=PAGE_SIZE + 1,
                       offset=(page - 1) * PAGE_SIZE, **filters)
    kept = {k: v for k, v in query.items() if k != "page" and v}
    return _render(
        request, "list.html", items=items[:PAGE_SIZE], filters=filters, page=page,
        statuses=review.STATUSES, q=query.get("q", ""),
        prev_url=f"/items?{urlencode({**kept, 'page': page - 1})}" if page > 1 else None,
        next_url=f"/items?{urlencode({**kept, 'page': page + 1})}"
        if len(items) > PAGE_SIZE else None,
    )


# --- the app -----------------------------------------------------------------------------


def create_app(engine: sa.Engine, settings: Settings, *, secret: str,
               secure_cookies: bool = True, sweep_interval_s: float = SWEEP_INTERVAL_S
               ) -> web.Application:
    """The review web application.

    Args:
        secret: the key session cookies are signed with.
        secure_cookies: mark cookies `Secure` (HTTPS only); off only for `--dev` on plain http.
        sweep_interval_s: how often lapsed leases are returned to the queue in the background.
    """
    app = web.Application(middlewares=[_headers, _sessions], client_max_size=64 * 1024)
    app[_ENGINE] = engine
    app[_SETTINGS] = settings
    app[_CODEC] = SessionCodec(secret)
    app[_TEMPLATES] = _templates()
    app[_SECURE] = secure_cookies
    app.add_routes([
        web.get("/", _home),
        web.get("/login", _login_page),
        web.post("/login", _login),
        web.post("/logout", _logout),
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
    ])

    async def sweep(_app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(sweep_interval_s)
                try:
                    returned = await _run(review.expire_leases, engine)
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


def serve(settings: Settings, *, dev: bool = False) -> None:
    """Serve the review page on ITMGUARD_REVIEW_HOST:ITMGUARD_REVIEW_PORT until SIGTERM or SIGINT.

    Raises:
        ConfigError: no ITMGUARD_REVIEW_SECRET and not `dev`.
        DatabaseUnavailable, DatabaseNotMigrated: the database cannot serve the queue.
    """
    from worker.persistence import check_schema_current, create_engine

    secret = settings.review_secret
    if secret is None:
        if not dev:
            raise ConfigError(
                "ITMGUARD_REVIEW_SECRET", "",
                "required to sign moderators' sessions (e.g. `openssl rand -hex 32`); "
                "`itmguard review serve --dev` runs without one on this machine only",
            )
        secret = secrets.token_hex(32)
        log.warning("review_dev_mode", reason="random session key, sessions end on restart; "
                    "cookies not marked Secure")
    engine = create_engine(settings.database_url)
    check_schema_current(engine)
    app = create_app(engine, settings, secret=secret, secure_cookies=not dev)
    log.info("review_serving", host=settings.review_host, port=settings.review_port, dev=dev)
    web.run_app(app, host=settings.review_host, port=settings.review_port, print=None,
                access_log=None)
    engine.dispose()
