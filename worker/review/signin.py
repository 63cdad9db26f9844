"""Signing in and out: the sign-in form, the check of what was typed into it, the cookie after.

Every attempt first passes the throttle (`worker.review.throttle`): too many
failures for the account or from the client's address answer 429 with
`Retry-After` before any password is hashed. Password hashes are checked on
a small thread pool of their own, so a burst of sign-ins queues there and
never in front of the database calls that moderators' pages wait on.

A moderator sent to sign in comes back to the page they asked for, but only
to a path on this site, so a link to the sign-in page cannot be made to send
a freshly signed-in moderator somewhere else. The log says that a sign-in was
refused or throttled, never which name or password was tried. Signing out
ends every session of that moderator, not only this browser's.
"""

from __future__ import annotations

import asyncio
import ipaddress
from concurrent.futures import Executor
from dataclasses import dataclass
from urllib.parse import urlsplit

import sqlalchemy as sa
import structlog
from aiohttp import web

from worker.review.accounts import authenticate
from worker.review.rendering import render
from worker.review.sessions import FORM, SESSION, SESSIONS, Session, new_session
from worker.review.throttle import (
    Refusal,
    ThrottlePolicy,
    begin_attempt,
    record_failure,
    record_success,
)

__all__ = ["HASH_THREADS", "SIGN_IN", "SignIn", "client_address", "login", "login_page", "logout"]

log = structlog.get_logger(__name__)

HASH_THREADS = 2
"""Threads that check password hashes; Argon2id takes 64 MiB and tens of ms each."""

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(proxies: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[_Network, ...]
) -> str | None:
    """The client's address: the peer, or, when the peer is a trusted proxy, the nearest
    address in X-Forwarded-For that is not one (anything further left could be forged)."""
    chain = [peer or ""]
    if forwarded_for:
        chain = [hop.strip() for hop in forwarded_for.split(",")] + chain
    for hop in reversed(chain):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return hop or None
        if not any(address in network for network in trusted):
            return str(address)
    return chain[0] or None


@dataclass(frozen=True)
class SignIn:
    """Checks sign-in attempts against the throttle and the accounts."""

    engine: sa.Engine
    policy: ThrottlePolicy
    hash_pool: Executor
    trusted_proxies: tuple[_Network, ...] = ()

    @classmethod
    def create(
        cls,
        engine: sa.Engine,
        policy: ThrottlePolicy,
        hash_pool: Executor,
        trusted_proxies: tuple[str, ...],
    ) -> SignIn:
        """Raises: ValueError: a trusted proxy is not an address or a network."""
        return cls(engine, policy, hash_pool, _networks(trusted_proxies))

    async def attempt(
        self, username: str, password: str, address: str | None
    ) -> Session | Refusal | None:
        """A session for the right password, a Refusal while throttled, None for a wrong one."""
        refusal = await asyncio.to_thread(
            begin_attempt, self.engine, self.policy, username, address
        )
        if refusal is not None:
            return refusal
        account = await asyncio.get_running_loop().run_in_executor(
            self.hash_pool, authenticate, self.engine, username, password
        )
        if account is None:
            if await asyncio.to_thread(record_failure, self.engine, self.policy, username):
                log.warning("review_account_locked")
            return None
        await asyncio.to_thread(record_success, self.engine, username, address)
        return new_session(account.username, account.session_generation)


SIGN_IN = web.AppKey("sign_in", SignIn)


def _safe_next(target: str | None) -> str:
    """Only a path on this site: no scheme, host, `//` or backslash (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/review"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/review"
    return target


def _redirect(request: web.Request, target: str, session: Session) -> web.HTTPSeeOther:
    response = web.HTTPSeeOther(target)
    request.app[SESSIONS].set_cookie(response, session)
    return response


async def login_page(request: web.Request) -> web.Response:
    """The sign-in form; a signed-in moderator goes straight on to where they were going."""
    target = _safe_next(request.query.get("next"))
    if request[SESSION].user is not None:
        raise web.HTTPSeeOther(target)
    return render(request, "login.html", next=target, error=None, username="")


def _refused(request: web.Request, refusal: Refusal, username: str, target: str) -> web.Response:
    log.info("review_sign_in_throttled", locked=refusal.locked, retry_after_s=refusal.retry_after_s)
    error = (
        "This account is locked after too many failed sign-ins; an admin can lift the lock "
        "with `itmguard review unlock-moderator`."
        if refusal.locked
        else f"Too many failed sign-ins: wait {refusal.retry_after_s} s and try again."
    )
    response = render(
        request, "login.html", status=429, next=target, error=error, username=username
    )
    response.headers["Retry-After"] = str(refusal.retry_after_s)
    return response


async def login(request: web.Request) -> web.Response:
    """Sign in with the form's name and password, or show the form again with 401 or 429."""
    form = request[FORM]
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    desk = request.app[SIGN_IN]
    address = client_address(
        request.remote, request.headers.get("X-Forwarded-For"), desk.trusted_proxies
    )
    outcome = await desk.attempt(username, password, address)
    if isinstance(outcome, Refusal):
        return _refused(request, outcome, username, target)
    if outcome is None:
        log.info("review_sign_in_refused")
        return render(
            request,
            "login.html",
            status=401,
            next=target,
            error="Wrong username or password.",
            username=username,
        )
    log.info("review_signed_in", moderator=outcome.user)
    raise _redirect(request, target, outcome)


async def logout(request: web.Request) -> web.Response:
    """End every session of this moderator; the browser gets a fresh one without a name in it."""
    user = request[SESSION].user
    if user is not None:
        await request.app[SESSIONS].end_all(user)
    raise _redirect(request, "/login", new_session())
