"""The review pages' HTML: server-rendered Jinja2 templates and the filters they use.

Templates autoescape everything and fail on a missing name instead of
printing nothing, since a caption or a note is whatever a poster or a
moderator typed; the `visible` filter marks the characters in such text that
would otherwise hide or reorder it (`worker.review.display`). Images come only
from this server: the thumbnail the worker stored of the picture it scored,
never the poster's URL, which would tell the image host who looked and when,
and may by now show another picture. Every page gets the signed-in moderator, the session's CSRF
token for its forms, and the message a redirect asked it to show.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from worker.review.display import (
    CAPTION_PREVIEW_CHARS,
    character_name,
    contradicted_runs,
    hidden_characters,
    score_text,
)
from worker.review.items import DECISIONS, Item
from worker.review.sessions import SESSION

__all__ = ["MESSAGES", "REASON_KEYS", "TEMPLATES", "image_src", "render", "templates", "visible"]

TEMPLATES = web.AppKey("templates", jinja2.Environment)
MESSAGES = {
    "empty": "The queue is empty: nothing is waiting for review.",
    "released": "Item released back to the queue.",
    "decided_all": "Decision recorded. The queue is empty.",
    "held": "Another moderator holds this item.",
    "expired": "Your lease on this item ran out, so it went back to the queue. Claim it again.",
    "not_claimed": "You do not hold this item: claim it first.",
    "decided": "This item already has its decision.",
    "invalid": "That decision was not accepted: a confirmed mismatch needs a reason from the "
    "list, and a note is at most 2,000 characters.",
    "own_opinion": "This item waits for a second opinion on your own decision: "
    "another moderator gives it.",
    "undo_refused": "That decision can no longer be undone: only your own latest decision, "
    "within the undo window.",
    "undone": "Decision undone: the item is yours again to decide.",
    "display_saved": "Display settings saved.",
}
"""What a redirect's `msg` and `error` query parameters stand for; unknown codes show nothing."""

REASON_KEYS = "abdefghijklmopqstwxyz"
"""Keys that pick a reason on the item page, in the order of ITMGUARD_REVIEW_REASONS; the
letters the page's other shortcuts use (c, n, r, u, v) are left out."""


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
    env.filters["visible"] = visible
    env.filters["explained"] = explained
    env.filters["score"] = score_text
    env.globals["preview_chars"] = CAPTION_PREVIEW_CHARS
    env.globals["reason_keys"] = REASON_KEYS
    return env


def visible(text: str) -> Markup:
    """`text` escaped, each hidden or reordering character shown as a marked `U+XXXX` label."""
    return Markup("").join(
        Markup('<span class="hidden-char" title="{}">{}</span>').format(
            character_name(part), f"U+{ord(part):04X}"
        )
        if hidden
        else escape(part)
        for hidden, part in hidden_characters(text)
    )


def explained(text: str, explanation: dict[str, Any] | None) -> Markup:
    """`text` as `visible` shows it, the words the image contradicts marked."""
    return Markup("").join(
        Markup('<mark class="contradicted">{}</mark>').format(visible(part))
        if contradicted
        else visible(part)
        for contradicted, part in contradicted_runs(text, explanation)
    )


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
    """Where the page loads the item's picture from: its stored thumbnail, or nowhere."""
    return f"/items/{item.id}/thumbnail" if item.has_thumbnail else None


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
