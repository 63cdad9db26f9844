"""Signing in and out: the sign-in form, the check of what was typed into it, the cookie after.

A moderator sent to sign in comes back to the page they asked for, but only
to a path on this site, so a link to the sign-in page cannot be made to send
a freshly signed-in moderator somewhere else. The log says that a sign-in was
refused, never which name or password was tried.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import structlog
from aiohttp import web

from worker.review.rendering import render
from worker.review.sessions import FORM, SESSION, SESSIONS, Session, new_session

__all__ = ["login", "login_page", "logout"]

log = structlog.get_logger(__name__)


def _safe_next(target: str | None) -> str:
    """Only a path on this site: no scheme, host, `//` or backslash (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/review"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/review"
    return target


def _redirect(request: web.Request, target: str, session: Session) -> web.HTTPSeeOther:
    # a raised redirect skips the session middleware's tail, so the cookie is set here
    response = web.HTTPSeeOther(target)
    request.app[SESSIONS].set_cookie(response, session)
    return response


async def login_page(request: web.Request) -> web.Response:
    """The sign-in form; a signed-in moderator goes straight on to where they were going."""
    target = _safe_next(request.query.get("next"))
    if request[SESSION].user is not None:
        raise web.HTTPSeeOther(target)
    return render(request, "login.html", next=target, error=None, username="")


async def login(request: web.Request) -> web.Response:
    """Sign in with the form's name and password, or show the form again with 401."""
    form = request[FORM]
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    session = await request.app[SESSIONS].sign_in(username, password)
    if session is None:
        log.info("review_sign_in_refused")
        return render(
            request,
            "login.html",
            status=401,
            next=target,
            error="Wrong username or password.",
            username=username,
        )
    log.info("review_signed_in", moderator=session.user)
    raise _redirect(request, target, session)


async def logout(request: web.Request) -> web.Response:
    """End the session: the browser gets a fresh one without a moderator in it."""
    raise _redirect(request, "/login", new_session())
