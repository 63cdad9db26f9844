"""Explanations: which words of a flagged caption the image contradicts."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from export.shapes import COLOURS
from worker.bundle import load_bundle
from worker.config import FetchLimits
from worker.demo.report import Row, Sample, format_table, write_report
from worker.explain import (
    Explanation,
    Phrase,
    VariantScorer,
    candidate_spans,
    explain_batch,
    leave_out,
    words,
)
from worker.judge import Prepared, prepare, score_prepared
from worker.messages import validator, verdict_message
from worker.review.display import contradicted_runs
from worker.scoring import OnnxScorer
from worker.testing import FakeScorer, post_event, shape_image
from worker.verdicts import Record

SHAPES_BUNDLE = Path(__file__).parent / "data" / "shapes-itm"


def _texts(caption: str, spans: Sequence[tuple[int, int]]) -> list[str]:
    return [caption[start:end] for start, end in spans]


def test_words_join_hyphens_and_apostrophes_and_skip_punctuation() -> None:
    """A word runs across a hyphen or an apostrophe; punctuation is never a word."""
    caption = "A red double-decker bus, in London's rain!"
    assert _texts(caption, words(caption)) == [
        "A",
        "red",
        "double-decker",
        "bus",
        "in",
        "London's",
        "rain",
    ]


def test_phrases_are_runs_of_content_words_then_their_words() -> None:
    """Maximal runs of content words come first, then each word of a longer run; stop words
    never stand alone."""
    caption = "a red double-decker bus in London"
    assert _texts(caption, candidate_spans(caption, 10)) == [
        "red double-decker bus",
        "London",
        "red",
        "double-decker",
        "bus",
    ]


def test_punctuation_ends_a_phrase_and_the_limit_cuts_the_list() -> None:
    """A comma between two content words splits them; at most `limit` spans come back."""
    caption = "sunset, beach and palm trees"
    assert _texts(caption, candidate_spans(caption, 10)) == [
        "sunset",
        "beach",
        "palm trees",
        "palm",
        "trees",
    ]
    assert _texts(caption, candidate_spans(caption, 2)) == ["sunset", "beach"]
    assert candidate_spans("the of and", 8) == []
    assert candidate_spans(caption, 0) == []


def test_leave_out_removes_the_span_and_tidies_spaces() -> None:
    """The variant is the caption without the span, white space made single."""
    caption = "a red circle and a blue square"
    assert leave_out(caption, (2, 12)) == "a and a blue square"
    assert leave_out(caption, (0, 1)) == "red circle and a blue square"


def test_culprits_are_the_top_phrases_that_do_not_overlap() -> None:
    """The top phrase is highlighted, with any other that gains at least half its log-odds
    and does not overlap it; nothing is highlighted when no removal helps."""
    phrases = (
        Phrase("red double-decker bus", 2, 23, 0.5),
        Phrase("bus", 20, 23, 0.45),
        Phrase("London", 27, 33, 0.3),
        Phrase("red", 2, 5, 0.01),
    )
    explanation = Explanation(score=0.05, phrases=phrases)
    assert [p.text for p in explanation.culprits] == ["red double-decker bus", "London"]
    assert Explanation(0.05, (Phrase("cat", 0, 3, -0.01),)).culprits == ()
    assert Explanation(0.05, ()).culprits == ()


@dataclass
class _Explaining(FakeScorer):
    """A fake scorer that also scores caption variants, recording each call's size."""

    explain_variants: int = 8
    variant_calls: list[int] = field(default_factory=list)

    def score_variants(
        self, images: Sequence[Image.Image], captions: Sequence[str], image_of: Sequence[int]
    ) -> np.ndarray:
        self.variant_calls.append(len(captions))
        return self.score([images[i] for i in image_of], captions)


def _red_rule(image: Image.Image, caption: str) -> float:
    """A match unless the caption says 'red'."""
    return 0.1 if "red" in caption else 0.9


def test_only_mismatches_are_explained_in_one_call() -> None:
    """Matches get no explanation and cost nothing; every mismatch's variants go to the
    model in one call, and the contradicted word comes first."""
    scorer = _Explaining(_red_rule)
    assert isinstance(scorer, VariantScorer)
    image = Image.new("RGB", (8, 8))
    captions = ["a blue square", "a red circle", "two red stars on the left", "a cat"]
    scores = [float(s) for s in scorer.score([image] * 4, captions)]
    explained = explain_batch(scorer, [image] * 4, captions, scores)
    assert [e is None for e in explained] == [True, False, False, True]
    # two flagged posts share max(2 x 4 posts, 8 variants): at most 4 each; the first has 3
    assert scorer.variant_calls == [3 + 4]
    assert explained[1] is not None and explained[1].culprits[0].text in ("red", "red circle")
    assert explained[2] is not None and "red" in explained[2].culprits[0].text


def test_explanations_off_or_unsupported_cost_nothing() -> None:
    """With 0 variants, or a scorer without `score_variants`, no model call is made."""
    image = Image.new("RGB", (8, 8))
    off = _Explaining(_red_rule, explain_variants=0)
    assert explain_batch(off, [image], ["a red circle"], [0.1]) == [None]
    assert off.variant_calls == []
    plain = FakeScorer(_red_rule)
    assert explain_batch(plain, [image], ["a red circle"], [0.1]) == [None]
    assert plain.calls == []


def test_a_batch_of_mismatches_shares_one_batch_worth_of_variants() -> None:
    """When most of a batch is flagged, the variants in all stay within twice its size."""
    scorer = _Explaining(_red_rule)
    image = Image.new("RGB", (8, 8))
    captions = ["a big red circle near a green tree"] * 16
    explain_batch(scorer, [image] * 16, captions, [0.1] * 16)
    assert scorer.variant_calls == [32]


def test_a_failing_variant_call_leaves_the_batch_unexplained() -> None:
    """The model raising on the variants never fails the batch."""

    class Failing(_Explaining):
        def score_variants(
            self, images: Sequence[Image.Image], captions: Sequence[str], image_of: Sequence[int]
        ) -> np.ndarray:
            raise RuntimeError("boom")

    image = Image.new("RGB", (8, 8))
    assert explain_batch(Failing(_red_rule), [image], ["a red circle"], [0.1]) == [None]


def _blue_circle_and_blue_square() -> Image.Image:
    image = Image.new("RGB", (96, 96), (240, 240, 235))
    draw = ImageDraw.Draw(image)
    draw.ellipse((11, 35, 37, 61), fill=COLOURS["blue"])
    draw.rectangle((60, 37, 84, 59), fill=COLOURS["blue"])
    return image


@pytest.fixture(scope="module")
def shapes_scorer() -> OnnxScorer:
    return OnnxScorer(load_bundle(SHAPES_BUNDLE), providers=("cpu",))


def test_shapes_model_blames_the_wrong_colour(shapes_scorer: OnnxScorer) -> None:
    """The trained shapes model, shown a blue circle and a blue square, blames "red" (or
    "red circle") for "a red circle and a blue square"."""
    image = _blue_circle_and_blue_square()
    caption = "a red circle and a blue square"
    (score,) = shapes_scorer.score([image], [caption])
    assert score < shapes_scorer.threshold
    (explanation,) = explain_batch(shapes_scorer, [image], [caption], [float(score)])
    assert explanation is not None
    assert explanation.phrases[0].text in ("red", "red circle")
    assert explanation.culprits[0].text in ("red", "red circle")


def test_one_graph_variants_score_as_the_pairs_do(shapes_scorer: OnnxScorer) -> None:
    """Without the two graphs, a variant scores exactly as the same pair scored directly."""
    images = [Image.open(io.BytesIO(shape_image("red", "circle"))).convert("RGB")]
    captions = ["a red circle", "a blue circle", "a circle"]
    direct = shapes_scorer.score(images * 3, captions)
    varied = shapes_scorer.score_variants(images, captions, [0, 0, 0])
    np.testing.assert_allclose(varied, direct, atol=1e-6)


def test_score_prepared_keeps_the_explanation_with_the_review_and_the_flag() -> None:
    """A mismatch's review content carries its explanation, and the flag built from it
    follows the verdict schema; a match has neither."""
    scorer = _Explaining(_red_rule)
    records = [
        Record(post_event(f"p{i}", caption, shape_image("blue", "circle")), "posts", 0, i)
        for i, caption in enumerate(["a red circle", "a blue circle"])
    ]

    class NoFetch:
        async def fetch_all(self, urls: object) -> dict[str, bytes]:
            return {}

        async def close(self) -> None:
            return None

    async def prepared() -> Prepared:
        return await prepare(records, NoFetch(), FetchLimits(), input_size=None)

    fixed = datetime(2026, 12, 1, tzinfo=UTC)
    outcomes = score_prepared(asyncio.run(prepared()), scorer, lambda: fixed)
    flagged, matched = outcomes
    assert matched.review is None
    assert flagged.review is not None and flagged.review.explanation is not None
    assert flagged.verdict is not None
    message = verdict_message(flagged.verdict, flagged.review.explanation)
    validator("verdict.v1").validate(message)
    assert message["explanation"]["culprits"][0]["text"] in ("red", "red circle")
    assert "explanation" not in verdict_message(flagged.verdict)


def test_contradicted_runs_mark_the_culprits_even_in_a_cut_preview() -> None:
    """The caption splits into marked and plain runs; spans past a cut preview are cut with
    it, and malformed or overlapping ones are skipped."""
    caption = "a red double-decker bus in London"
    explanation = Explanation(
        0.01, (Phrase("red double-decker bus", 2, 23, 0.4), Phrase("London", 27, 33, 0.3))
    ).as_json()
    assert list(contradicted_runs(caption, explanation)) == [
        (False, "a "),
        (True, "red double-decker bus"),
        (False, " in "),
        (True, "London"),
    ]
    assert list(contradicted_runs(caption[:22], explanation)) == [
        (False, "a "),
        (True, "red double-decker bu"),
    ]
    broken = {
        "culprits": [{"start": "2", "end": 5}, {"start": 0, "end": 5}, {"start": 3, "end": 9}]
    }
    assert list(contradicted_runs(caption, broken)) == [(True, "a red"), (False, caption[5:])]
    assert list(contradicted_runs(caption, None)) == [(False, caption)]


def test_demo_report_names_and_marks_the_contradicted_words(tmp_path: Path) -> None:
    """The demo's table and its HTML report name the contradicted phrase, escaped."""
    explanation = Explanation(0.01, (Phrase("<bus>", 2, 7, 0.4),)).as_json()
    sample = Sample(shape_image("red", "circle"), "a <bus> in London", False, "generated")
    row = Row("p0", sample, 0.01, "mismatch", None, "m@1", explanation)
    assert row.contradicted == ["<bus>"]
    assert 'contradicts "<bus>"' in format_table([row])
    html = write_report([row], tmp_path / "report.html").read_text()
    assert "a &lt;bus&gt; in London" in html
    assert "the picture contradicts <mark>&lt;bus&gt;</mark>" in html
