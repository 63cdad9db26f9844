"""What the review page's route handlers share: the app's keys, redirects, and running a queue
action so that a refusal sends the moderator back to the item, told why."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlencode

import sqlalchemy as sa
from aiohttp import web

from worker.config import Settings
from worker.errors import (
    ItemAlreadyDecided,
    ItemHeldByOther,
    ItemNotClaimed,
    ItemNotFound,
    LeaseExpired,
    OwnSecondOpinion,
    ReviewError,
    UndoRefused,
)

__all__ = ["ENGINE", "SETTINGS", "act", "redirect"]

ENGINE = web.AppKey("engine", sa.Engine)
SETTINGS = web.AppKey("settings", Settings)

_CODES: tuple[tuple[type[ReviewError], str], ...] = (
    (ItemHeldByOther, "held"),
    (LeaseExpired, "expired"),
    (ItemNotClaimed, "not_claimed"),
    (ItemAlreadyDecided, "decided"),
    (OwnSecondOpinion, "own_opinion"),
    (UndoRefused, "undo_refused"),
)
"""Most specific first: `LeaseExpired` is an `ItemNotClaimed`."""


def redirect(path: str, **query: str) -> web.HTTPSeeOther:
    """A 303 to `path` with `query`, to raise from a handler."""
    return web.HTTPSeeOther(f"{path}?{urlencode(query)}" if query else path)


def _error_code(exc: ReviewError) -> str:
    return next((code for cls, code in _CODES if isinstance(exc, cls)), "invalid")


async def act(item_id: int, action: Callable[[], object]) -> None:
    """Run a queue action on an item in a thread; a refusal redirects to the item with its
    error code, a missing item is a 404."""
    try:
        await asyncio.to_thread(action)
    except ItemNotFound:
        raise web.HTTPNotFound() from None
    except ReviewError as exc:
        raise redirect(f"/items/{item_id}", error=_error_code(exc)) from None
