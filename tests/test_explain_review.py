"""An explained mismatch from the model's thread to the moderator: stored with the review
item, highlighted on the item page, shown by `itmguard review claim`."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from PIL import Image, ImageDraw

from export.shapes import COLOURS
from tests.test_review_web import CHROMIUM, CHROMIUM_ARGS, PASSWORD, SECRET, ServerThread
from worker.bundle import load_bundle
from worker.cli import main as cli
from worker.config import FetchLimits, Settings
from worker.judge import Prepared, prepare, score_prepared
from worker.persistence import create_engine, write_outcomes
from worker.review.accounts import add_moderator
from worker.review.items import get_item
from worker.review.web import create_app
from worker.scoring import OnnxScorer
from worker.testing import post_event
from worker.verdicts import Record

pytestmark = pytest.mark.integration

SHAPES_BUNDLE = Path(__file__).parent / "data" / "shapes-itm"
CAPTION = "a red circle and a blue square"


class _NoFetch:
    async def fetch_all(self, urls: object) -> dict[str, bytes]:
        return {}

    async def close(self) -> None:
        return None


def _picture() -> bytes:
    """A blue circle and a blue square, as PNG bytes."""
    image = Image.new("RGB", (96, 96), (240, 240, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse((11, 35, 37, 61), fill=COLOURS["blue"])
    draw.rectangle((60, 37, 84, 59), fill=COLOURS["blue"])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def item_id(database_url: str) -> Iterator[tuple[sa.Engine, int]]:
    """The shapes model's mismatch for CAPTION, judged, explained and written as the worker
    writes it; moderator alice exists."""
    scorer = OnnxScorer(load_bundle(SHAPES_BUNDLE), providers=("cpu",))
    records = [Record(post_event("post-shapes", CAPTION, _picture()), "posts", 0, 0)]

    async def prepared() -> Prepared:
        return await prepare(records, _NoFetch(), FetchLimits(), input_size=None)

    fixed = datetime(2026, 12, 1, tzinfo=UTC)
    outcomes = score_prepared(asyncio.run(prepared()), scorer, lambda: fixed)
    engine = create_engine(database_url)
    write_outcomes(engine, outcomes)
    add_moderator(engine, "alice", PASSWORD)
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT id FROM review_items")).scalar_one()
    yield engine, int(found)
    engine.dispose()


def test_the_explanation_is_stored_with_the_review_item(item_id: tuple[sa.Engine, int]) -> None:
    """The review item keeps the phrases tried, with character spans into its caption."""
    engine, found = item_id
    explanation = get_item(engine, found).explanation
    assert explanation is not None
    top = explanation["culprits"][0]
    assert top["text"] in ("red", "red circle")
    assert CAPTION[top["start"] : top["end"]] == top["text"]
    assert len(explanation["phrases"]) >= 4


def test_review_claim_names_the_contradicted_words(
    item_id: tuple[sa.Engine, int], database_url: str
) -> None:
    """`itmguard review claim` prints a line naming the contradicted phrase."""
    _, found = item_id
    result = CliRunner().invoke(
        cli,
        ["review", "claim", str(found), "--database-url", database_url, "--moderator", "alice"],
    )
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("contradicted ")]
    assert '"red' in line


def test_the_item_page_highlights_the_contradicted_words(
    item_id: tuple[sa.Engine, int], tmp_path: Path
) -> None:
    """The item page marks the phrase in the caption and says why the post was flagged."""
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the browser tests need Debian's Chromium at {CHROMIUM}")
    engine, found = item_id
    app = create_app(engine, Settings(), secret=SECRET, secure_cookies=False)
    with ServerThread(app) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page: Any = browser.new_page()
        page.goto(f"{server.url}/items/{found}")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", PASSWORD)
        with page.expect_navigation():
            page.click("button[type=submit]")
        page.wait_for_selector("#caption mark.contradicted")
        assert page.inner_text("#caption") == CAPTION
        assert page.inner_text("#caption mark.contradicted") in ("red", "red circle")
        assert "contradicts" in page.inner_text("#explanation")
        page.screenshot(path=str(tmp_path / "item.png"), full_page=True)
        browser.close()
