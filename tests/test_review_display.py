"""What a moderator sees, in a real browser: the picture the model scored, served by the review
page itself; hidden and reordering characters marked; long captions folded; small scores."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from tests import test_review_web as web_tests
from worker.config import Settings
from worker.images import thumbnail_jpeg
from worker.persistence import create_engine
from worker.review.accounts import add_moderator
from worker.review.items import history
from worker.review.web import create_app
from worker.testing import shape_image

pytestmark = pytest.mark.integration

browser = web_tests.browser
context = web_tests.context
SHOTS = Path("/tmp/shots")
BIDI = "Free prize \u202etxt.exe"
LONG = "a very long caption " * 5_000  # 100 KB
ITEMS = [  # key, caption, image URL, keep a thumbnail, score
    ("bidi", BIDI, "https://img.example/prize.jpg", True, 0.0001),
    ("long", LONG, "https://img.example/long.jpg", True, 0.2),
    ("old", "queued before thumbnails of URL images", "https://img.example/old.jpg", False, 0.3),
]


@pytest.fixture
def site(database_url: str) -> Iterator[web_tests.Site]:
    """Moderator alice and three URL-image items: two with the thumbnail the worker kept of the
    picture it scored, one from before it kept them."""
    engine = create_engine(database_url)
    add_moderator(engine, "alice", web_tests.PASSWORD)
    picture = thumbnail_jpeg(
        Image.open(io.BytesIO(shape_image("blue", "triangle", size=240, seed=1)))
    )
    ids = {}
    with engine.begin() as conn:
        for key, caption, url, kept, score in ITEMS:
            ids[key] = conn.execute(
                sa.text(
                    "INSERT INTO review_items (post_id, model_id, score, threshold, status, "
                    "created_at, caption, image_url, thumbnail) VALUES (:p, 'tiny-blip@1', :s, "
                    "0.5, 'pending', now(), :c, :u, :t) RETURNING id"
                ),
                {
                    "p": f"post-{key}",
                    "s": score,
                    "c": caption,
                    "u": url,
                    "t": picture if kept else None,
                },
            ).scalar_one()
    app = create_app(engine, Settings(), secret=web_tests.SECRET, secure_cookies=False)
    with web_tests.ServerThread(app) as server:
        yield web_tests.Site(server.url, engine, ids)
    engine.dispose()


def _open(context: Any, site: web_tests.Site, key: str) -> tuple[Any, list[str]]:
    """alice on item `key`'s page, holding it; returns the page and every URL it requested."""
    page = web_tests.sign_in(context, site, path=f"/items/{site.ids[key]}")
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.click("text=Claim this item")
    page.wait_for_selector("button[value=confirmed_mismatch]")
    page.wait_for_load_state("load")
    return page, requested


def test_a_bidi_caption_is_marked_beside_the_stored_picture(
    context: Any, site: web_tests.Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A right-to-left override shows as a marked U+202E, not obeyed; the picture is the stored
    thumbnail served by the review page, the poster's URL is text, and nothing is fetched from
    the image host; a score of 0.0001 does not read as 0."""
    page, requested = _open(context, site, "bidi")
    assert page.inner_text("#caption") == "Free prize U+202Etxt.exe"
    assert "\u202e" not in page.content()
    marker = page.locator("#caption .hidden-char")
    assert marker.get_attribute("title") == "U+202E RIGHT-TO-LEFT OVERRIDE"
    assert page.inner_text("#score") == "1.00e-04"
    picture = page.locator("#picture")
    assert picture.get_attribute("src") == f"/items/{site.ids['bidi']}/thumbnail"
    assert picture.evaluate("img => img.complete && img.naturalWidth > 0")
    assert "https://img.example/prize.jpg" in page.inner_text(".url")
    assert page.locator("a[href*='img.example'], [src*='img.example']").count() == 0
    assert [url for url in requested if "img.example" in url] == []
    assert [(e.action, e.via) for e in history(site.engine, site.ids["bidi"])] == [("claim", "web")]
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = tmp_path / "review-item-bidi-thumbnail.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copy(shot, SHOTS / shot.name)
    with capsys.disabled():
        print(f"\n[review display] screenshot: {SHOTS / shot.name}")


def test_an_item_without_a_stored_picture_says_so(context: Any, site: web_tests.Site) -> None:
    """An item queued before thumbnails of URL images were kept shows a placeholder and loads
    nothing from the URL; the page's policy allows images from the review page only."""
    page = web_tests.sign_in(context, site, path=f"/items/{site.ids['old']}")
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    response = page.reload()
    assert "img-src 'self';" in response.headers["content-security-policy"]
    assert "https:" not in response.headers["content-security-policy"]
    assert page.locator(".item img").count() == 0
    assert "No stored picture" in page.inner_text("#no-picture")
    assert [url for url in requested if "img.example" in url] == []


def test_a_huge_caption_is_folded_and_the_buttons_stay_in_view(
    context: Any, site: web_tests.Site
) -> None:
    """A 100 KB caption shows its start and an expander; the decision buttons stay on the
    first screen, and the whole caption is there on request."""
    page, _ = _open(context, site, "long")
    assert len(page.inner_text("#caption")) < 1_000
    button = page.locator("button[value=confirmed_mismatch]").bounding_box()
    assert button is not None and button["y"] < 800
    assert not page.locator("#caption-full").is_visible()
    page.click("details.more summary")
    assert page.locator("#caption-full").is_visible()
    assert page.inner_text("#caption-full").strip() == LONG.strip()
