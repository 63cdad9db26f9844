"""Who is asking: signed session cookies, and the middleware that admits a request or not.

Sessions are HMAC-SHA256-signed cookies (key from `ITMGUARD_REVIEW_SECRET`)
holding the moderator's name, a CSRF token, the time of sign-in and a
fingerprint of the password hash, so a changed password or a disabled account
ends every session at its next request. Every route but sign-in, `/healthz`
and the static files needs a session; every POST needs the session's CSRF
token in its form. The server keeps no session state, so nothing needs
cleaning up when a moderator walks away.
"""

from __future__ import annotations

import asyncio
import base64
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

from worker.review.accounts import authenticate, get_moderator

__all__ = [
    "FORM",
    "SESSION",
    "SESSIONS",
    "SESSION_MAX_AGE_S",
    "Session",
    "SessionCodec",
    "Sessions",
    "admit",
    "moderator",
    "new_session",
]

SESSION_MAX_AGE_S = 12 * 3600
"""A session lasts one shift; then the moderator signs in again."""


@dataclass(frozen=True)
class Session:
    """What the session cookie carries."""

    csrf: str
    user: str | None = None
    issued: float = 0.0
    fingerprint: str | None = None


def new_session(user: str | None = None, fingerprint: str | None = None) -> Session:
    """A session with a fresh CSRF token, so signing in or out never reuses an old one."""
    return Session(
        csrf=secrets.token_urlsafe(32), user=user, issued=time.time(), fingerprint=fingerprint
    )


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
            session = Session(
                csrf=str(data["c"]), user=data["u"], issued=float(data["t"]), fingerprint=data["p"]
            )
        except (ValueError, KeyError, TypeError):
            return None
        if (now if now is not None else time.time()) - session.issued > self.max_age_s:
            return None
        return session

    def fingerprint(self, password_hash: str) -> str:
        """A short keyed digest of the password hash: a new password ends old sessions."""
        return self._sign(b"pw\0" + password_hash.encode())[:22]


class Sessions:
    """The app's sessions: the cookie they travel in, and the account check that ends them."""

    def __init__(self, engine: sa.Engine, secret: str, *, secure: bool) -> None:
        self._engine = engine
        self._codec = SessionCodec(secret)
        self._secure = secure
        # the __Host- prefix makes browsers insist on Secure, Path=/ and no Domain
        self._name = "__Host-itmguard_review" if secure else "itmguard_review"

    async def current(self, request: web.Request) -> Session | None:
        """The request's session, or None if it has none, or its account no longer admits it.

        A session outlives neither its account nor the password it was signed in with.
        """
        session = self._codec.loads(request.cookies.get(self._name))
        if session is None or session.user is None:
            return session
        account = await asyncio.to_thread(get_moderator, self._engine, session.user)
        if (
            account is None
            or account.disabled
            or session.fingerprint != self._codec.fingerprint(account.password_hash)
        ):
            return None
        return session

    async def sign_in(self, username: str, password: str) -> Session | None:
        """A new session if `password` is right for enabled account `username`, else None.

        The session is bound to the password hash as it is now, so a new password ends it.
        """
        account = await asyncio.to_thread(authenticate, self._engine, username, password)
        if account is None:
            return None
        return new_session(account.username, self._codec.fingerprint(account.password_hash))

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
    methods get 401, since a redirect would lose what they were sending.
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
    request[SESSION] = session
    if request.method == "POST":
        form = await request.post()
        token = form.get("csrf")
        if not isinstance(token, str) or not hmac.compare_digest(
            _bytes(token), _bytes(session.csrf)
        ):
            raise web.HTTPForbidden(text="CSRF token missing or wrong: reload the page\n")
        request[FORM] = form
    response = await handler(request)
    new = request.get(_NEW_SESSION)
    if new is not None:
        sessions.set_cookie(response, new)
    return response
