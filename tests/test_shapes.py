"""The generated shapes data set, and the committed bundle trained on it."""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.shapes import (
    HARD_KINDS,
    KINDS,
    POSITIONS,
    Claim,
    Pair,
    generate_pairs,
    holds,
    labelled_events,
    negative,
    random_scene,
)
from export.tiny import WORDS
from export.train_tiny import evaluate
from worker.bundle import load_bundle
from worker.messages import validator

BUNDLE = Path(__file__).parent / "data" / "shapes-itm"
HELD_OUT_SEED = 424242  # neither the training stream nor its validation and test seeds
_ATTRIBUTES = ("colour", "shape", "count", "position")


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    """600 generated pairs, enough for every kind of negative to appear many times."""
    return generate_pairs(600, seed=7)


def _fingerprint(pairs: list[Pair]) -> list[tuple[object, ...]]:
    return [(p.caption, p.label, p.kind, p.image.tobytes()) for p in pairs]


def test_same_seed_gives_the_same_pairs_and_another_seed_does_not() -> None:
    """Pictures, captions, labels and kinds are a pure function of the seed."""
    assert _fingerprint(generate_pairs(40, seed=3)) == _fingerprint(generate_pairs(40, seed=3))
    assert _fingerprint(generate_pairs(40, seed=3)) != _fingerprint(generate_pairs(40, seed=4))


def test_pairs_alternate_a_match_and_a_negative_of_every_kind(pairs: list[Pair]) -> None:
    """Half the pairs are true captions; the negatives cover every kind about equally."""
    assert [p.label for p in pairs] == [1, 0] * 300
    assert {p.kind for p in pairs[::2]} == {"match"}
    counts = {kind: sum(p.kind == kind for p in pairs) for kind in KINDS[1:]}
    assert min(counts.values()) >= 55, counts


def test_labels_say_whether_the_caption_is_true_of_the_scene(pairs: list[Pair]) -> None:
    """Every match caption holds for its scene and no negative caption does."""
    assert [holds(p.scene, p.claim) for p in pairs] == [p.label == 1 for p in pairs]


def test_hard_negatives_change_exactly_the_attribute_their_kind_names(pairs: list[Pair]) -> None:
    """A colour, shape, count or position negative changes only that attribute of the truth."""
    for match, wrong in zip(pairs[::2], pairs[1::2], strict=True):
        if wrong.kind not in HARD_KINDS:
            continue
        changed = [
            name for name in _ATTRIBUTES if getattr(match.claim, name) != getattr(wrong.claim, name)
        ]
        assert changed == [wrong.kind]
        assert wrong.claim.template == match.claim.template
        assert wrong.image is match.image


def test_captions_use_only_the_tiny_vocabulary(pairs: list[Pair]) -> None:
    """Every caption word is in export.tiny.WORDS, so the tokenizer never spells one out."""
    vocabulary = set(WORDS)
    assert {w for p in pairs for w in p.caption.split()} <= vocabulary


def test_pictures_have_the_requested_size() -> None:
    """Pictures are RGB at exactly the model's image size."""
    assert {(p.image.mode, p.image.size) for p in generate_pairs(10, seed=1, image_size=48)} == {
        ("RGB", (48, 48))
    }


def test_a_lone_shape_lined_up_somewhere_is_in_exactly_one_position() -> None:
    """A single positioned shape makes one position claim true and the other four false."""
    rng = random.Random(5)
    scenes = [s for s in (random_scene(rng) for _ in range(300)) if s.count == 1 and s.position]
    assert scenes
    for scene in scenes:
        true = [p for p in POSITIONS if holds(scene, Claim(scene.colour, scene.shape, 1, p, 0))]
        assert true == [scene.position]


def test_a_position_negative_needs_a_caption_that_names_a_position() -> None:
    """Asking to move a caption without a position is refused rather than guessed."""
    scene = random_scene(random.Random(1))
    claim = Claim(scene.colour, scene.shape, scene.count, None, 0)
    with pytest.raises(ValueError, match="position"):
        negative(scene, claim, "position", random.Random(0))


def test_labelled_events_are_post_events_with_a_label(pairs: list[Pair]) -> None:
    """Each event, `label` set aside, is a valid post event carrying its picture as PNG."""
    events = list(labelled_events(pairs[:6]))
    for event, pair in zip(events, pairs[:6], strict=True):
        post = {k: v for k, v in event.items() if k != "label"}
        assert list(validator("post-event.v1").iter_errors(post)) == []
        assert (event["caption"], event["label"]) == (pair.caption, pair.label)
        image = Image.open(io.BytesIO(base64.b64decode(event["image"]["data"])))
        assert image.format == "PNG"
        assert np.array_equal(np.asarray(image), np.asarray(pair.image))
    assert len({e["post_id"] for e in events}) == len(events)


def test_committed_bundle_matches_held_out_pairs_including_hard_negatives() -> None:
    """The committed bundle judges 95% of unseen pairs right, and 90% of each kind."""
    bundle = load_bundle(BUNDLE)
    held_out = generate_pairs(600, seed=HELD_OUT_SEED, image_size=bundle.spec.image.height)
    accuracy = evaluate(bundle, held_out)
    assert accuracy["overall"] >= 0.95, accuracy
    assert min(accuracy.values()) >= 0.90, accuracy
    assert set(accuracy) == {"overall", *KINDS}
