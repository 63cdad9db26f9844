"""The review pages' HTML: server-rendered Jinja2 templates and the filters they use.

Templates autoescape everything and fail on a missing name instead of
printing nothing, since a caption or a note is whatever a poster or a
moderator typed. Every page gets the signed-in moderator, the session's CSRF
token for its forms, and the message a redirect asked it to show.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from worker.review.items import DECISIONS, Item
from worker.review.sessions import SESSION

__all__ = ["MESSAGES", "TEMPLATES", "image_src", "render", "templates"]

TEMPLATES = web.AppKey("templates", jinja2.Environment)
MESSAGES = {
    "empty": "The queue is empty: nothing is waiting for review.",
    "released": "Item released back to the queue.",
    "decided_all": "Decision recorded. The queue is empty.",
    "held": "Another moderator holds this item.",
    "expired": "Your lease on this item ran out, so it went back to the queue. Claim it again.",
    "not_claimed": "You do not hold this item: claim it first.",
    "decided": "This item already has its decision.",
    "invalid": "That decision or note was not accepted.",
}
"""What a redirect's `msg` and `error` query parameters stand for; unknown codes show nothing."""


def templates() -> jinja2.Environment:
    """The templates shipped in `worker/review/templates`, with the review pages' filters."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("worker.review", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["age"] = _age
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


def image_src(item: Item) -> str | None:
    """Where the page loads the item's image from; only http(s) URLs, never `javascript:`."""
    if item.has_thumbnail:
        return f"/items/{item.id}/thumbnail"
    if item.image_url and urlsplit(item.image_url).scheme in ("http", "https"):
        return item.image_url
    return None


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    """Template `name` as an HTML response, with what every page needs besides `context`."""
    session = request[SESSION]
    message = request.query.get("msg")
    html = (
        request.app[TEMPLATES]
        .get_template(name)
        .render(
            user=session.user,
            csrf=session.csrf,
            message=MESSAGES.get(message or ""),
            decisions=DECISIONS,
            **context,
        )
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
