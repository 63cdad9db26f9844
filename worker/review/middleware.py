"""What every response of the review page gets: security headers, and clean error pages.

The Content Security Policy admits scripts and styles from this server's own
static files and images from this server only (the stored thumbnails), so a
page never makes the moderator's browser fetch anything from elsewhere. An
unreachable database answers 503 with `Retry-After`, and any other failure a
plain 500 page; the log names the exception's type only, since a database
error's text carries the SQL and its parameters, which hold users' content.
"""

from __future__ import annotations

import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from worker.errors import DatabaseUnavailable
from worker.review.rendering import TEMPLATES

__all__ = ["CSP", "RETRY_AFTER_S", "guard"]

log = structlog.get_logger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
RETRY_AFTER_S = 5
"""What a 503 asks the browser to wait: about as long as a Postgres restart or failover."""


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the handler; turn what it raises into a page; put the headers on every response."""
    started = time.monotonic()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _finish(request, exc, started)
        raise
    except DatabaseUnavailable:
        log.warning("review_database_unavailable", path=request.path)
        response = _error_page(
            request, 503, "The database cannot be reached just now. Try again in a few seconds."
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    except Exception as exc:  # noqa: BLE001 - every other failure becomes a plain 500 page
        log.error("review_request_failed", path=request.path, error=type(exc).__name__)
        response = _error_page(request, 500, "Something went wrong on the server.")
    _finish(request, response, started)
    return response


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    html = (
        request.app[TEMPLATES]
        .get_template("error.html")
        .render(user=None, csrf="", message=None, status=status, error=message)
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _finish(request: web.Request, response: web.StreamResponse, started: float) -> None:
    """Security headers on every response, raised redirects and errors included, and its log."""
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    if not request.path.startswith("/static/"):
        headers["Cache-Control"] = "no-store"
    log.debug(
        "review_request",
        method=request.method,
        path=request.path,
        status=response.status,
        ms=round((time.monotonic() - started) * 1000, 1),
    )
