"""Who is asking: signed session cookies, and the middleware that admits a request or not.

Sessions are HMAC-SHA256-signed cookies (key from `ITMGUARD_REVIEW_SECRET`)
holding the moderator's name, a CSRF token, the time of sign-in, the time of
the last request and the account's session generation. Signing out,
disabling, enabling and a new password bump the generation
(`worker.review.accounts`), so every older cookie of that moderator stops
working at its next request, on every replica. A session also ends after
`ITMGUARD_REVIEW_IDLE_S` without a request, and 12 hours after sign-in
whatever happens. Every route but sign-in, `/healthz` and the static files
needs a session; every POST needs the session's CSRF token in its form.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDictProxy

from worker.review.accounts import end_sessions, get_moderator

__all__ = [
    "FORM",
    "SESSION",
    "SESSIONS",
    "SESSION_IDLE_S",
    "SESSION_MAX_AGE_S",
    "Session",
    "SessionCodec",
    "Sessions",
    "admit",
    "moderator",
    "new_session",
]

SESSION_MAX_AGE_S = 12 * 3600
"""A session lasts one shift at most; then the moderator signs in again."""

SESSION_IDLE_S = 1800.0
"""A session unused this long has ended (ITMGUARD_REVIEW_IDLE_S)."""

_SEEN_EVERY_S = 60.0
"""How stale the cookie's time of last request may get before a request renews it."""


@dataclass(frozen=True)
class Session:
    """What the session cookie carries."""

    csrf: str
    user: str | None = None
    issued: float = 0.0
    seen: float = 0.0
    generation: int | None = None


def new_session(user: str | None = None, generation: int | None = None) -> Session:
    """A session with a fresh CSRF token, so signing in or out never reuses an old one."""
    now = time.time()
    return Session(
        csrf=secrets.token_urlsafe(32), user=user, issued=now, seen=now, generation=generation
    )


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "replace")


class SessionCodec:
    """Signs and checks session cookies with HMAC-SHA256 under a key derived from the secret."""

    def __init__(
        self, secret: str, *, max_age_s: float = SESSION_MAX_AGE_S, idle_s: float = SESSION_IDLE_S
    ) -> None:
        self._key = hashlib.sha256(b"itmguard-review-session\0" + secret.encode()).digest()
        self.max_age_s = max_age_s
        self.idle_s = idle_s

    def _sign(self, data: bytes) -> str:
        mac = hmac.new(self._key, data, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def dumps(self, session: Session) -> str:
        payload = json.dumps(
            {
                "c": session.csrf,
                "u": session.user,
                "t": session.issued,
                "s": session.seen,
                "g": session.generation,
            },
            separators=(",", ":"),
        ).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{body}.{self._sign(body.encode())}"

    def loads(self, value: str | None, *, now: float | None = None) -> Session | None:
        """The session in `value`, or None if forged, malformed, too old or idle too long."""
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(_bytes(mac), _bytes(self._sign(_bytes(body)))):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            generation = data["g"]
            session = Session(
                csrf=str(data["c"]),
                user=data["u"],
                issued=float(data["t"]),
                seen=float(data["s"]),
                generation=None if generation is None else int(generation),
            )
        except (ValueError, KeyError, TypeError):
            return None
        now = now if now is not None else time.time()
        if now - session.issued > self.max_age_s or now - session.seen > self.idle_s:
            return None
        return session


class Sessions:
    """The app's sessions: the cookie they travel in, and the account check that ends them."""

    def __init__(
        self, engine: sa.Engine, secret: str, *, secure: bool, idle_s: float = SESSION_IDLE_S
    ) -> None:
        self._engine = engine
        self._codec = SessionCodec(secret, idle_s=idle_s)
        self._secure = secure
        # the __Host- prefix makes browsers insist on Secure, Path=/ and no Domain
        self._name = "__Host-itmguard_review" if secure else "itmguard_review"

    async def current(self, request: web.Request) -> Session | None:
        """The request's session, or None if it has none, or its account no longer admits it.

        A session outlives neither its account nor its account's session generation.

        Raises:
            DatabaseUnavailable: the account cannot be looked up.
        """
        session = self._codec.loads(request.cookies.get(self._name))
        if session is None or session.user is None:
            return session
        account = await asyncio.to_thread(get_moderator, self._engine, session.user)
        if account is None or account.disabled or session.generation != account.session_generation:
            return None
        return session

    async def end_all(self, username: str) -> None:
        """End every session of `username`, this one included (signing out)."""
        await asyncio.to_thread(end_sessions, self._engine, username)

    def sent(self, response: web.StreamResponse) -> bool:
        """Whether `response` already carries a session cookie (sign-in and sign-out set one)."""
        return self._name in response.cookies

    def set_cookie(self, response: web.StreamResponse, session: Session) -> None:
        """Send `session` with `response`, a raised redirect included."""
        response.set_cookie(
            self._name,
            self._codec.dumps(session),
            max_age=SESSION_MAX_AGE_S,
            path="/",
            secure=self._secure,
            httponly=True,
            samesite="Lax",
        )


SESSIONS = web.AppKey("sessions", Sessions)
SESSION = web.RequestKey("session", Session)
FORM: web.RequestKey[MultiDictProxy[Any]] = web.RequestKey("form", MultiDictProxy)
_NEW_SESSION = web.RequestKey("set_session", Session)


def moderator(request: web.Request) -> str:
    """The signed-in moderator's name; `admit` lets nobody else reach the queue's routes."""
    user = request[SESSION].user
    assert user is not None, "a route for moderators was reached without signing in"
    return user


@web.middleware
async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admit a request with a live session (and, for a POST, its CSRF token); refuse the rest.

    GETs without a session are sent to sign in and come back afterwards; other
    methods get 401, since a redirect would lose what they were sending. A
    signed-in request renews the cookie's time of last request, at most once a
    minute, so an active moderator is never signed out for being idle.
    """
    if request.path == "/healthz" or request.path.startswith("/static/"):
        return await handler(request)  # no session: nothing there is private
    sessions = request.app[SESSIONS]
    session = await sessions.current(request)
    public = request.path == "/login"
    if session is None or (session.user is None and not public):
        if not public:
            if request.method in ("GET", "HEAD"):
                query = urlencode({"next": request.path_qs})
                raise web.HTTPSeeOther(f"/login?{query}")
            raise web.HTTPUnauthorized(text="sign in first\n")
        if session is None:
            session = new_session()
            request[_NEW_SESSION] = session
    elif session.user is not None and time.time() - session.seen > _SEEN_EVERY_S:
        request[_NEW_SESSION] = dataclasses.replace(session, seen=time.time())
    request[SESSION] = session
    if request.method == "POST":
        form = await request.post()
        token = form.get("csrf")
        if not isinstance(token, str) or not hmac.compare_digest(
            _bytes(token), _bytes(session.csrf)
        ):
            raise web.HTTPForbidden(text="CSRF token missing or wrong: reload the page\n")
        request[FORM] = form
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _send_new(request, exc)
        raise
    _send_new(request, response)
    return response


def _send_new(request: web.Request, response: web.StreamResponse) -> None:
    """Send the session made or renewed for this request, unless the handler sent its own."""
    new, sessions = request.get(_NEW_SESSION), request.app[SESSIONS]
    if new is not None and not sessions.sent(response):
        sessions.set_cookie(response, new)
