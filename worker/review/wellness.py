"""How the review page shows each moderator the pictures: blurred and greyscaled by default.

Moderators look at disturbing images all day; a blurred, grey picture still
shows whether it could match its caption, and one click or key reveals the
item's picture in full. Each moderator sets her own levels, kept with her
account so they follow her to any browser.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from worker.errors import UnknownModerator
from worker.persistence import translated

__all__ = ["BLUR_LEVELS", "DEFAULT_DISPLAY", "Display", "display_for", "set_display"]

BLUR_LEVELS = {0: "none", 1: "light", 2: "medium", 3: "strong"}


@dataclass(frozen=True)
class Display:
    """One moderator's picture settings: blur level (0-3) and greyscale."""

    blur: int = 2
    greyscale: bool = True

    def __post_init__(self) -> None:
        if self.blur not in BLUR_LEVELS:
            raise ValueError(f"blur must be one of {', '.join(map(str, BLUR_LEVELS))}")

    @property
    def css(self) -> str:
        """The picture's CSS classes (`review.css` holds the filters)."""
        return f"blur-{self.blur}" + (" grey" if self.greyscale else "")


DEFAULT_DISPLAY = Display()


def display_for(engine: sa.Engine, username: str) -> Display:
    """`username`'s settings; the defaults for an account that no longer exists."""
    with translated(), engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT image_blur, image_greyscale FROM moderators WHERE username = :u"),
            {"u": username},
        ).one_or_none()
    return DEFAULT_DISPLAY if row is None else Display(row.image_blur, row.image_greyscale)


def set_display(engine: sa.Engine, username: str, display: Display) -> None:
    """Keep `display` as `username`'s settings.

    Raises:
        UnknownModerator: no such account.
    """
    with translated(), engine.begin() as conn:
        changed = conn.execute(
            sa.text(
                "UPDATE moderators SET image_blur = :b, image_greyscale = :g WHERE username = :u"
            ),
            {"b": display.blur, "g": display.greyscale, "u": username},
        ).rowcount
    if not changed:
        raise UnknownModerator(username)
