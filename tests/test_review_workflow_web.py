"""The moderators' workflow in a real browser: the reason picker, blurred pictures revealed per
item, undo, triage and context on the page, second opinions, the stats page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests import test_review_web as web_tests
from tests.support import LEASE
from worker.review.decisions import DecisionPolicy
from worker.review.queue import claim, decide

pytestmark = pytest.mark.integration

browser = web_tests.browser
context = web_tests.context
site = web_tests.site
sign_in = web_tests.sign_in
SHOTS = Path("/tmp/shots")
SECOND = DecisionPolicy(reasons=("spam_scam",), second_opinion_share=1.0)


def _filter(page: Any) -> str:
    return str(page.eval_on_selector("#picture", "img => getComputedStyle(img).filter"))


def test_a_confirmed_mismatch_waits_for_its_reason(context: Any, site: web_tests.Site) -> None:
    """1 without a reason marks the picker and decides nothing; b then 1 decides with that
    reason; a forged POST without one is refused by the server."""
    page = sign_in(context, site)
    page.keyboard.press("n")
    page.wait_for_url(f"{site.url}/items/{site.ids['xss']}")
    page.keyboard.press("1")
    page.wait_for_selector("#reasons.missing")
    assert site.item("xss").status == "claimed"
    page.keyboard.press("b")
    assert page.is_checked("input[name=reason][value=manipulated_media]")
    page.keyboard.press("1")
    page.wait_for_url(f"{site.url}/items/{site.ids['circle']}")
    decided = site.item("xss")
    assert (decided.decision, decided.reason) == ("confirmed_mismatch", "manipulated_media")
    csrf = page.locator("form.signout input[name=csrf]").input_value()
    response = page.request.post(
        f"{site.url}/items/{site.ids['circle']}/decide",
        form={"decision": "confirmed_mismatch", "csrf": csrf},
    )
    assert response.url.endswith("error=invalid")
    assert site.item("circle").status == "claimed"


def test_pictures_start_blurred_and_are_revealed_per_item(
    context: Any, site: web_tests.Site
) -> None:
    """The picture is blurred and grey until a click or v reveals it, on that item only; a
    moderator's own display settings change the levels."""
    page = sign_in(context, site)
    page.click("#next")
    page.wait_for_url(f"{site.url}/items/{site.ids['xss']}")
    assert _filter(page) == "blur(14px) grayscale(1)"
    page.click("#picture", position={"x": 10, "y": 10})
    assert _filter(page) == "none"
    page.click("button[value=escalate]")
    page.wait_for_url(f"{site.url}/items/{site.ids['circle']}")
    assert _filter(page) == "blur(14px) grayscale(1)"
    page.keyboard.press("v")
    assert _filter(page) == "none"
    page.goto(site.url + "/display")
    page.select_option("#blur", "3")
    page.uncheck("#greyscale")
    page.click("text=Save")
    page.wait_for_url(site.url + "/display?msg=display_saved")
    page.goto(f"{site.url}/items/{site.ids['circle']}")
    assert _filter(page) == "blur(28px) grayscale(0)"


def test_undo_takes_the_decision_back(
    context: Any, site: web_tests.Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """After deciding, the next item offers to undo it; u brings the item back, claimed, with an
    undo row in its history; the screenshot shows the picker, the blurred picture and undo."""
    page = sign_in(context, site)
    page.click("#next")
    page.wait_for_url(f"{site.url}/items/{site.ids['xss']}")
    page.click("button[value=not_a_mismatch]")
    page.wait_for_url(f"{site.url}/items/{site.ids['circle']}")
    page.wait_for_load_state("load")
    assert "You decided item" in page.inner_text("#undo")
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "review-item-workflow.png"), full_page=True)
    page.keyboard.press("u")
    page.wait_for_url(f"{site.url}/items/{site.ids['xss']}?msg=undone")
    undone = site.item("xss")
    assert (undone.status, undone.claimed_by, undone.decision) == ("claimed", "alice", None)
    assert [a for a, _, _ in site.audit("xss")] == ["claim", "decide", "undo"]
    assert page.locator("button[value=escalate]").count() == 1
    with capsys.disabled():
        print(f"\n[review workflow] item page: {SHOTS / 'review-item-workflow.png'}")


def test_triage_and_context(context: Any, site: web_tests.Site) -> None:
    """The queue page counts pending items by model and band and claims within a band, also after
    a decision; the item shows another model's verdict on its post and its author's recent
    flags."""
    with site.engine.begin() as conn:
        conn.execute(sa.text("UPDATE review_items SET author_id = 'author-9'"))
        conn.execute(
            sa.text(
                "INSERT INTO verdicts (post_id, model_id, score, threshold, verdict, scored_at, "
                "role) VALUES ('post-triangle', 'candidate@2', 0.8, 0.5, 'match', now(), 'shadow')"
            )
        )
    page = sign_in(context, site)
    assert "tiny-blip@1" in page.inner_text("#triage")
    page.select_option("#triage-band", "mid")
    page.click("#next")
    page.wait_for_url(f"{site.url}/items/{site.ids['triangle']}?band=mid")  # the lowest mid
    assert "candidate@2" in page.inner_text("#other-verdicts")
    assert "3 other posts flagged" in page.inner_text("#author")
    page.keyboard.press("2")  # the next item comes from the same band, not the lower scores
    page.wait_for_url(f"{site.url}/items/{site.ids['square']}?band=mid")


def test_a_second_opinion_is_blind_and_the_stats_show_agreement(
    browser: Any, site: web_tests.Site, capsys: pytest.CaptureFixture[str]
) -> None:
    """bob gives the second opinion without seeing alice's decision; the stats page shows the
    agreement rate, the reasons and each moderator's figures."""
    engine = site.engine
    for key, decision, reason in (
        ("xss", "confirmed_mismatch", "spam_scam"),
        ("circle", "not_a_mismatch", None),
    ):
        claim(engine, site.ids[key], "alice", lease_s=LEASE)
        decide(engine, site.ids[key], "alice", decision, reason=reason, policy=SECOND)
    claim(engine, site.ids["circle"], "bob", lease_s=LEASE)
    decide(engine, site.ids["circle"], "bob", "escalate")
    bob_ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = sign_in(bob_ctx, site, user="bob")
        page.click("#next")
        page.wait_for_url(f"{site.url}/items/{site.ids['xss']}")
        assert "second opinion" in page.inner_text("#opinion")
        assert "confirmed" not in page.inner_text("#history")
        page.check("input[name=reason][value=spam_scam]")
        page.click("button[value=confirmed_mismatch]")
        page.wait_for_url(f"{site.url}/items/{site.ids['triangle']}")
        page.goto(site.url + "/stats")
        assert page.inner_text("#stat-second") == "2"
        assert page.inner_text("#stat-agreement") == "50%"
        assert "spam scam" in page.inner_text("#reasons")
        rows = page.locator("#moderators tbody tr")
        assert rows.count() == 2
        assert rows.nth(0).inner_text().split("\t") == ["alice", "2", "2.0", "0", "2", "50%"]
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "review-stats.png"), full_page=True)
    finally:
        bob_ctx.close()
    with capsys.disabled():
        print(f"\n[review workflow] stats page: {SHOTS / 'review-stats.png'}")
