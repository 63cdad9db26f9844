"""What the demo shows: its posts, the verdicts they got, a table and a self-contained report."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from worker.images import thumbnail_jpeg

__all__ = ["REPORT_THUMBNAIL_SIZE", "Row", "Sample", "Totals", "format_table", "write_report"]

REPORT_THUMBNAIL_SIZE = 200
"""Longer side of the report's inline pictures: 44 of them keep the page under a few MB."""


@dataclass(frozen=True)
class Sample:
    """One demo post: a photo, a caption, and whether the caption is true of the photo."""

    image: bytes
    caption: str
    expected_match: bool
    source: str


@dataclass(frozen=True)
class Row:
    post_id: str
    sample: Sample
    score: float | None
    verdict: str
    error_code: str | None
    model_id: str
    """The model that scored the post, as its verdict row records it."""
    explanation: dict[str, Any] | None = None
    """Which words of the caption the picture contradicts, as the review item keeps it."""

    @property
    def agrees(self) -> bool:
        return self.verdict == ("match" if self.sample.expected_match else "mismatch")

    @property
    def contradicted(self) -> list[str]:
        """The phrases the picture contradicts, the most contradicted first."""
        return [c["text"] for c in (self.explanation or {}).get("culprits", [])]


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table of the verdicts and a totals line."""
    width = max([4, *(len(row.post_id) for row in rows)])
    lines = [f"{'post':<{width}} {'caption':<44} {'expected':<9} {'score':>6}  verdict"]
    for row in rows:
        caption = (
            row.sample.caption if len(row.sample.caption) <= 44 else row.sample.caption[:41] + "..."
        )
        expected = "match" if row.sample.expected_match else "mismatch"
        score = "-" if row.score is None else f"{row.score:.3f}"
        mark = "" if row.agrees else "  (differs)"
        if row.contradicted:
            mark += "  contradicts " + ", ".join(f'"{text}"' for text in row.contradicted)
        lines.append(
            f"{row.post_id:<{width}} {caption:<44} {expected:<9} {score:>6}  {row.verdict}{mark}"
        )
    lines.append(Totals.of(rows).line())
    return "\n".join(lines)


@dataclass(frozen=True)
class Totals:
    """Verdict counts and agreement with the captions' authors, for the table and the report."""

    posts: int
    match: int
    mismatch: int
    error: int
    agreed: int

    @classmethod
    def of(cls, rows: Sequence[Row]) -> Totals:
        def count(verdict: str) -> int:
            return sum(r.verdict == verdict for r in rows)

        return cls(
            len(rows),
            count("match"),
            count("mismatch"),
            count("error"),
            sum(r.agrees for r in rows),
        )

    def line(self) -> str:
        return (
            f"{self.posts} posts: {self.match} match, {self.mismatch} mismatch, "
            f"{self.error} error; {self.agreed} of {self.posts} "
            f"({self.agreed / max(self.posts, 1):.0%}) as the caption's author intended"
        )


def _thumbnail(data: bytes) -> str:
    small = thumbnail_jpeg(Image.open(io.BytesIO(data)), size=REPORT_THUMBNAIL_SIZE)
    return "data:image/jpeg;base64," + base64.b64encode(small).decode("ascii")


def write_report(rows: Sequence[Row], path: Path) -> Path:
    """A single HTML file, thumbnails inlined, that opens anywhere without a server."""
    env = Environment(loader=PackageLoader("worker.demo"), autoescape=select_autoescape(["html"]))
    html = env.get_template("report.html").render(
        rows=rows,
        thumbnails=[_thumbnail(row.sample.image) for row in rows],
        model_id=", ".join(sorted({row.model_id for row in rows})),
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        totals=Totals.of(rows),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
