"""The review page's workflow routes beside the queue's: undo, the team's figures, and each
moderator's picture settings.

Like every route, these run queue and account reads in a thread and audit
what they change as `web`.
"""

from __future__ import annotations

import asyncio
from functools import partial

from aiohttp import web

from worker.review.decisions import undo
from worker.review.figures import FIGURES_WINDOW_DAYS, figures
from worker.review.inputs import requested_item
from worker.review.items import stats
from worker.review.origin import WEB
from worker.review.rendering import render
from worker.review.routing import ENGINE, SETTINGS, act, redirect
from worker.review.sessions import FORM, moderator
from worker.review.wellness import BLUR_LEVELS, Display, display_for, set_display

__all__ = ["routes"]


async def _undo(request: web.Request) -> web.Response:
    """Undo the moderator's own decision on the item, and take her back to it."""
    item_id, settings = requested_item(request), request.app[SETTINGS]
    await act(
        item_id,
        partial(
            undo,
            request.app[ENGINE],
            item_id,
            moderator(request),
            window_s=settings.review_undo_s,
            lease_s=settings.review_lease_s,
            origin=WEB,
        ),
    )
    raise redirect(f"/items/{item_id}", msg="undone")


async def _stats(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    counts = await asyncio.to_thread(stats, engine)
    team = await asyncio.to_thread(figures, engine)
    return render(
        request, "stats.html", stats=counts, figures=team, window_days=FIGURES_WINDOW_DAYS
    )


async def _display_page(request: web.Request) -> web.Response:
    current = await asyncio.to_thread(display_for, request.app[ENGINE], moderator(request))
    return render(request, "display.html", display=current, levels=BLUR_LEVELS)


async def _save_display(request: web.Request) -> web.Response:
    form = request[FORM]
    blur = str(form.get("blur", ""))
    if not blur.isdigit() or int(blur) not in BLUR_LEVELS:
        raise web.HTTPBadRequest(text="blur must be 0, 1, 2 or 3\n")
    chosen = Display(blur=int(blur), greyscale=form.get("greyscale") == "on")
    await asyncio.to_thread(set_display, request.app[ENGINE], moderator(request), chosen)
    raise redirect("/display", msg="display_saved")


def routes() -> list[web.RouteDef]:
    """The routes of this module, for `worker.review.web.create_app`."""
    return [
        web.post(r"/items/{item_id:\d+}/undo", _undo),
        web.get("/stats", _stats),
        web.get("/display", _display_page),
        web.post("/display", _save_display),
    ]
