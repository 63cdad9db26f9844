"""The review web page in a real browser: Playwright driving Debian's Chromium.

These tests fail, never skip, when Chromium or Playwright is missing: `.ci/run`
installs Debian's `chromium`; Playwright's own browser download cannot work on
these machines.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest
import sqlalchemy as sa
from aiohttp import web
from PIL import Image

from worker.config import Settings
from worker.images import thumbnail_jpeg
from worker.persistence import create_engine
from worker.review.accounts import add_moderator, disable_moderator
from worker.review.items import Item, get_item, history
from worker.review.sessions import SESSION_MAX_AGE_S, Session, SessionCodec
from worker.review.web import create_app
from worker.testing import shape_image

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PASSWORD = "correct horse battery"
SECRET = "s" * 48
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright, headless; a missing piece fails the test with the fix."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"the browser tests need Playwright: .venv/bin/pip install -e '.[dev]' ({exc})")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the browser tests need Debian's Chromium at {CHROMIUM}: "
            "apt-get update && apt-get install -y chromium (.ci/run does this)"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class ServerThread:
    """The review app on an ephemeral loopback port, in a thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.url = ""
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._main(),), daemon=True
        )

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10), "the review server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@dataclass
class Site:
    """A running review page over a seeded queue."""

    url: str
    engine: sa.Engine
    ids: dict[str, int]

    def item(self, key: str) -> Item:
        return get_item(self.engine, self.ids[key])

    def audit(self, key: str) -> list[tuple[str, str, str | None]]:
        return [(e.action, e.moderator, e.decision) for e in history(self.engine, self.ids[key])]


ITEMS = [  # key, caption, colour and shape drawn, score (claim order is by score)
    ("xss", XSS, "red", "circle", 0.01),
    ("circle", "a blue square on a white table", "red", "circle", 0.05),
    ("triangle", "a yellow circle", "green", "triangle", 0.10),
    ("square", "two green triangles", "blue", "square", 0.20),
]


@pytest.fixture
def site(database_url: str) -> Iterator[Site]:
    """Accounts alice and bob, four queued items with inline thumbnails, the app serving them."""
    engine = create_engine(database_url)
    add_moderator(engine, "alice", PASSWORD)
    add_moderator(engine, "bob", PASSWORD)
    ids = {}
    with engine.begin() as conn:
        for i, (key, caption, colour, shape, score) in enumerate(ITEMS):
            image = Image.open(io.BytesIO(shape_image(colour, shape, size=240, seed=i)))
            ids[key] = conn.execute(
                sa.text(
                    "INSERT INTO review_items (post_id, model_id, score, threshold, status, "
                    "created_at, event_time, caption, thumbnail) VALUES (:p, 'tiny-blip@1', :s, "
                    "0.5, 'pending', now(), now() - interval '5 minutes', :c, :t) RETURNING id"
                ),
                {"p": f"post-{key}", "s": score, "c": caption, "t": thumbnail_jpeg(image)},
            ).scalar_one()
    settings = Settings(review_lease_s=300.0, review_order="score")
    app = create_app(engine, settings, secret=SECRET, secure_cookies=False)
    with ServerThread(app) as server:
        yield Site(server.url, engine, ids)
    engine.dispose()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile: no cookies."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    yield ctx
    ctx.close()


def sign_in(
    context: Any, site: Site, user: str = "alice", password: str = PASSWORD, path: str = "/review"
) -> Any:
    """Open `path`, land on the sign-in form, sign in, and return the page where it went."""
    page = context.new_page()
    page.goto(site.url + path)
    assert page.url.startswith(site.url + "/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    return page


def test_sign_in_then_review_with_clicks(
    context: Any, site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """alice signs in, takes the next item, decides it with a click and a note, gets the next."""
    page = sign_in(context, site)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    assert page.url == site.url + "/review"
    assert page.inner_text("#stat-pending") == "4"
    page.click("#next")
    page.wait_for_url(f"{site.url}/items/{site.ids['xss']}")  # lowest score first
    page.click("text=Release")
    page.wait_for_url(site.url + "/review?msg=released")
    page.goto(f"{site.url}/items/{site.ids['circle']}")
    page.click("text=Claim this item")
    page.wait_for_selector("button[value=confirmed_mismatch]")
    page.wait_for_load_state("load")
    assert page.inner_text("#caption") == "a blue square on a white table"
    assert page.inner_text("#score") == "0.050"
    image = page.locator("#picture")
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    screenshot = tmp_path / "review-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\n[review web] screenshot of the review page: {screenshot}")
    page.fill("textarea[name=note]", "the image shows a red circle")
    page.check("input[name=reason][value=misleading_context]")
    page.click("button[value=confirmed_mismatch]")
    page.wait_for_url(f"{site.url}/items/{site.ids['xss']}")  # the next item, claimed
    decided = site.item("circle")
    assert (decided.status, decided.decision, decided.reason, decided.decided_by, decided.note) == (
        "decided",
        "confirmed_mismatch",
        "misleading_context",
        "alice",
        "the image shows a red circle",
    )
    assert site.audit("circle") == [
        ("claim", "alice", None),
        ("decide", "alice", "confirmed_mismatch"),
    ]
    assert site.audit("xss") == [
        ("claim", "alice", None),
        ("release", "alice", None),
        ("claim", "alice", None),
    ]
    assert errors == []


def test_keyboard_shortcuts_decide(context: Any, site: Site) -> None:
    """n takes an item; 2, 3 and 1 decide (a picks 1's reason); keys typed into the note decide
    nothing."""
    page = sign_in(context, site)
    page.keyboard.press("n")
    page.wait_for_url(f"{site.url}/items/{site.ids['xss']}")
    page.keyboard.press("2")
    page.wait_for_url(f"{site.url}/items/{site.ids['circle']}")
    page.keyboard.press("3")
    page.wait_for_url(f"{site.url}/items/{site.ids['triangle']}")
    page.keyboard.press("/")
    page.keyboard.type("1 2 3 looks wrong")
    assert page.url == f"{site.url}/items/{site.ids['triangle']}"
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    page.keyboard.press("1")
    page.wait_for_url(f"{site.url}/items/{site.ids['square']}")
    assert [
        (site.item(k).decision, site.item(k).decided_by) for k in ("xss", "circle", "triangle")
    ] == [("not_a_mismatch", "alice"), ("escalate", "alice"), ("confirmed_mismatch", "alice")]
    assert site.item("triangle").note == "1 2 3 looks wrong"
    assert site.item("triangle").reason == "misleading_context"
    assert site.item("square").claimed_by == "alice"
    page.keyboard.press("r")
    page.wait_for_url(f"{site.url}/review?msg=released")
    assert site.item("square").status == "pending"


def test_unauthenticated_requests_are_refused(context: Any, site: Site) -> None:
    """Without a session, pages redirect to sign-in, POSTs get 401, and nothing changes."""
    item_id = site.ids["circle"]
    request = context.request
    for path in ("/review", "/items", f"/items/{item_id}", f"/items/{item_id}/thumbnail"):
        response = request.get(site.url + path, max_redirects=0)
        assert response.status == 303, path
        assert response.headers["location"].startswith("/login?next=")
    refused = request.post(
        f"{site.url}/items/{item_id}/decide",
        form={"decision": "escalate", "csrf": "x"},
        max_redirects=0,
    )
    assert refused.status == 401
    page = context.new_page()
    page.goto(f"{site.url}/items/{item_id}")
    assert page.url.startswith(site.url + "/login")
    assert "a blue square" not in page.content()
    wrong = sign_in(context, site, password="not the password")
    assert wrong.url.startswith(site.url + "/login")
    assert "Wrong username or password." in wrong.inner_text(".error")
    assert request.get(site.url + "/healthz").text() == "ok\n"
    assert site.item("circle").status == "pending"
    assert site.audit("circle") == []


def test_a_forged_post_without_csrf_is_refused(context: Any, site: Site) -> None:
    """A signed-in moderator's POST without the form's CSRF token gets 403 and changes nothing."""
    page = sign_in(context, site)
    page.click("#next")
    page.wait_for_url(f"{site.url}/items/{site.ids['xss']}")
    item_id = site.ids["xss"]
    for form in ({"decision": "escalate"}, {"decision": "escalate", "csrf": "forged"}):
        response = page.request.post(
            f"{site.url}/items/{item_id}/decide", form=form, max_redirects=0
        )
        assert response.status == 403
        assert "CSRF" in response.text()
    login = context.request.post(
        site.url + "/login", form={"username": "bob", "password": PASSWORD}, max_redirects=0
    )
    assert login.status == 403
    held = site.item("xss")
    assert (held.status, held.claimed_by, held.decision) == ("claimed", "alice", None)
    assert site.audit("xss") == [("claim", "alice", None)]


def test_a_script_caption_shows_as_text_and_runs_nothing(context: Any, site: Site) -> None:
    """A caption holding <script> and an onerror handler is shown verbatim and executes nothing."""
    page = sign_in(context, site)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.click("#next")
    page.wait_for_url(f"{site.url}/items/{site.ids['xss']}")
    assert page.inner_text("#caption") == XSS
    assert page.locator("#caption script, #caption img").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.fill("textarea[name=note]", "<b>bold?</b>")
    page.click("button[value=escalate]")
    page.wait_for_url(f"{site.url}/items/{site.ids['circle']}")
    page.goto(f"{site.url}/items/{site.ids['xss']}")
    assert page.locator("#history b, .note b").count() == 0
    assert page.inner_text(".note") == "<b>bold?</b>"
    page.goto(f"{site.url}/items?q=script")
    assert page.inner_text("#items td.caption") == XSS
    assert page.locator("#items script, #items td.caption img").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []


def test_another_moderators_item_cannot_be_decided(browser: Any, site: Site) -> None:
    """bob sees alice's item without decision buttons, and his decision POST is turned away."""
    alice_ctx, bob_ctx = browser.new_context(), browser.new_context()
    try:
        alice = sign_in(alice_ctx, site)
        alice.click("#next")
        alice.wait_for_url(f"{site.url}/items/{site.ids['xss']}")
        bob = sign_in(bob_ctx, site, user="bob", path=f"/items/{site.ids['xss']}")
        assert bob.url == f"{site.url}/items/{site.ids['xss']}"
        assert bob.locator("button[value=escalate]").count() == 0
        assert "alice, lease until" in bob.inner_text("#status")
        csrf = bob.locator("form.signout input[name=csrf]").input_value()
        response = bob.request.post(
            f"{site.url}/items/{site.ids['xss']}/decide",
            form={"decision": "escalate", "csrf": csrf},
        )
        assert response.url.endswith("error=held")
        assert "Another moderator holds this item." in response.text()
        assert site.item("xss").claimed_by == "alice" and site.item("xss").decision is None
    finally:
        alice_ctx.close()
        bob_ctx.close()


def test_list_filters_and_item_history(context: Any, site: Site) -> None:
    """The list narrows by status and caption; an item's page shows its audit history."""
    page = sign_in(context, site)
    page.click("#next")
    page.click("button[value=escalate]")
    page.wait_for_url(f"{site.url}/items/{site.ids['circle']}")
    page.goto(site.url + "/items")
    assert page.locator("#items tbody tr").count() == 4
    page.select_option("select[name=status]", "decided")
    page.click("text=Filter")
    page.wait_for_url("**/items?status=decided**")
    assert page.locator("#items tbody tr").count() == 1
    assert "escalate (alice)" in page.inner_text("#items tbody tr")
    page.goto(site.url + "/items?status=pending&q=yellow")
    assert page.inner_text("#items td.caption") == "a yellow circle"
    page.goto(f"{site.url}/items/{site.ids['xss']}")
    rows = page.locator("#history tbody tr")
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())] == [
        "claim",
        "decide",
    ]
    assert "escalate" in rows.nth(1).inner_text()


def test_a_disabled_moderator_is_signed_out(context: Any, site: Site) -> None:
    """Disabling an account ends its session at the next request."""
    page = sign_in(context, site)
    assert page.url == site.url + "/review"
    disable_moderator(site.engine, "alice")
    page.goto(site.url + "/items")
    assert page.url.startswith(site.url + "/login")


def test_sign_in_never_redirects_off_site(context: Any, site: Site) -> None:
    """A `next` pointing at another site is replaced by the queue page after sign-in."""
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        page = sign_in(context, site, path="/login?" + urlencode({"next": target}))
        assert page.url == site.url + "/review", target
        context.clear_cookies()


def test_cookies_and_headers_in_secure_mode(database_url: str) -> None:
    """Outside --dev the cookie is __Host-, Secure, HttpOnly and SameSite=Lax; pages carry a CSP."""
    engine = create_engine(database_url)
    app = create_app(engine, Settings(), secret=SECRET, secure_cookies=True)
    try:
        with ServerThread(app) as server, urlopen(server.url + "/login") as response:
            cookie = response.headers["Set-Cookie"]
            csp = response.headers["Content-Security-Policy"]
            assert response.headers["X-Frame-Options"] == "DENY"
    finally:
        engine.dispose()
    assert cookie.startswith("__Host-itmguard_review=")
    assert all(part in cookie for part in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"))
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_session_cookies_are_signed_and_expire() -> None:
    """A tampered, foreign-key, over-age or idle session cookie is not accepted."""
    codec = SessionCodec(SECRET, idle_s=600)
    session = Session(csrf="t", user="alice", issued=1_000.0, seen=1_000.0, generation=3)
    value = codec.dumps(session)
    assert codec.loads(value, now=1_001.0) == session
    _, mac = value.split(".")
    forged = codec.dumps(Session(csrf="t", user="bob", issued=1_000.0)).split(".")[0]
    assert codec.loads(f"{forged}.{mac}", now=1_001.0) is None
    assert SessionCodec("o" * 48).loads(value, now=1_001.0) is None
    assert codec.loads(value, now=1_000.0 + 601) is None
    renewed = codec.dumps(Session(csrf="t", user="alice", issued=1_000.0, seen=30_000.0))
    assert codec.loads(renewed, now=30_001.0) is not None
    assert codec.loads(renewed, now=1_000.0 + SESSION_MAX_AGE_S + 1) is None
    assert codec.loads("garbage", now=1_001.0) is None
