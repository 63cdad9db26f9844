"""The `--since` option: a point in time given as ISO 8601, with a time zone understood.

`itmguard compare` and `itmguard review export-labels` both take one; a time
written without an offset is read as UTC, so the same command line means the
same instant on every machine, whatever its local zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

__all__ = ["SINCE", "parse_since"]


def parse_since(text: str) -> datetime:
    """`text` as a timezone-aware datetime: `2026-11-28`, `2026-11-28T09:30`,
    `2026-11-28T09:30+01:00`; a date is its midnight, and no offset means UTC.

    Raises:
        ValueError: not an ISO 8601 date or date and time.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 date or time, e.g. 2026-11-28 or 2026-11-28T09:30Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class _Since(click.ParamType):
    """Click's side of `parse_since`: a bad value is a usage error naming the option."""

    name = "ISO-TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_since(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SINCE = _Since()
"""The click type of a `--since` option."""
