"""What the review page accepts from a request's path and query, and the 400s it refuses with.

Everything checked here would otherwise reach Postgres and fail there, as a
500 carrying the SQL: a NUL in a filter (Postgres text cannot hold one), an
unpaired surrogate, a page number whose offset overflows a bigint, an item
id beyond bigint.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

__all__ = ["MAX_FILTER_CHARS", "MAX_PAGE", "page_number", "requested_item", "text_filter"]

MAX_PAGE = 10_000
MAX_FILTER_CHARS = 200
_MAX_ID = 2**63 - 1


def requested_item(request: web.Request) -> int:
    """The item id in the path (its route admits digits only); beyond bigint, no such item."""
    item_id = int(request.match_info["item_id"])
    if item_id > _MAX_ID:
        raise web.HTTPNotFound(text=f"review item {item_id} does not exist\n")
    return item_id


def text_filter(query: Mapping[str, str], name: str) -> str | None:
    """A free-text filter as typed, or None; text Postgres cannot take is refused with 400."""
    value = query.get(name, "").strip()
    if len(value) > MAX_FILTER_CHARS:
        raise web.HTTPBadRequest(text=f"{name} is at most {MAX_FILTER_CHARS} characters\n")
    if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise web.HTTPBadRequest(text=f"{name} cannot contain NUL or unpaired surrogates\n")
    return value or None


def page_number(query: Mapping[str, str]) -> int:
    """The list page asked for, 1 when none; anything but 1..MAX_PAGE is refused with 400."""
    text = query.get("page", "1")
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise web.HTTPBadRequest(text=f"page must be a whole number from 1 to {MAX_PAGE}\n")
    return int(text)
