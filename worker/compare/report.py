"""The report directory of `itmguard compare`: `report.html` for a lead to read and
`summary.json` (schema `schemas/compare-summary.v1.json`) for machines, beside the plots.

The page is one Jinja2 template with every value escaped, since captions are
whatever posters wrote. Stored thumbnails are inlined, so the page opens
anywhere; a post whose image was a URL shows that URL's image, fetched without
a referrer, as the review page does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import jinja2

from worker.compare.queries import Picture
from worker.compare.summary import Comparison, Pair

__all__ = ["REPORT", "SUMMARY", "Shown", "percent", "shown", "write_report"]

REPORT = "report.html"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class Shown:
    """A disagreement as the page shows it: the pair, and what a review item kept of the post."""

    pair: Pair
    caption: str | None
    image_src: str | None
    """A data: URI of the stored thumbnail, or the post's http(s) image URL; None: no picture."""


def _image_src(picture: Picture) -> str | None:
    if picture.thumbnail is not None:
        return "data:image/jpeg;base64," + base64.b64encode(picture.thumbnail).decode("ascii")
    if picture.image_url and urlsplit(picture.image_url).scheme in ("http", "https"):
        return picture.image_url
    return None


def shown(top: Sequence[Pair], pictures: Mapping[str, Picture]) -> list[Shown]:
    """The top disagreements with their captions and pictures, where a review item kept them."""
    rows = []
    for pair in top:
        picture = pictures.get(pair.post_id)
        if picture is None:
            rows.append(Shown(pair, None, None))
        else:
            rows.append(Shown(pair, picture.caption, _image_src(picture)))
    return rows


def percent(value: float | None) -> str:
    """A share as a percentage with one decimal; a dash where there is nothing to share."""
    return "—" if value is None else f"{value:.1%}"


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("worker.compare", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["percent"] = percent
    env.filters["score"] = _score
    env.filters["human"] = lambda s: "not decided" if s is None else s.replace("_", " ")
    return env


def write_report(
    comparison: Comparison,
    rows: Sequence[Shown],
    out: Path,
    *,
    plots: Mapping[str, str],
    generated_at: datetime,
) -> Path:
    """Write `report.html` and `summary.json` into `out` (the plots are already there).

    Args:
        rows: the top disagreements as `shown` gives them.
        plots: file names of the plots in `out`, by what they show.
    """
    summary = comparison.to_dict(generated_at=generated_at, plots=dict(plots))
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    html = (
        _templates()
        .get_template(REPORT)
        .render(
            c=comparison,
            rows=rows,
            plots=plots,
            generated=generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        )
    )
    path = out / REPORT
    path.write_text(html, encoding="utf-8")
    return path
