"""How often an explanation blames the swapped-in caption's subject, on the demo's photos.

Each demo photo carries a false caption written for another photo ("a red
double-decker bus in London" under a cat). The figure is the share of those
captions whose top highlighted phrase names the swapped-in caption's subject,
by this rule: the subject is the caption's first phrase (its first run of
content words, `worker.explain.phrases`), and, when that phrase is a measure or
collection followed by "of" ("a bowl of strawberries", "a herd of zebras"), the
phrase after "of" as well, less the words ending in "ing" (the participles of
"a man jogging", which say what the subject does); the top phrase counts when it
shares a word with the subject. An explanation with nothing highlighted counts
as a miss.

Each caption is explained on its own, as one flagged post in a batch is, with
`ITMGUARD_EXPLAIN_VARIANTS`' default of 8 variants. It is a figure, not a gate: the
captions are hand-written, the rule is crude, and the starter model's own errors
show through. Printed for the false captions the model flags (what moderators
see) and for all of them, explained as if flagged.

    .venv/bin/python -m benchmarks.explain_demo [--bundle DIR]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

from worker.bundle import load_bundle
from worker.explain import Explanation, explain_batch, phrases, words
from worker.scoring import OnnxScorer


def subject_words(caption: str) -> set[str]:
    """The words of the caption's subject, by the rule in the module docstring."""
    runs = phrases(caption)
    if not runs:
        return set()
    subject = runs[:1]
    if len(runs) > 1 and caption[runs[0][-1][1] :].lstrip().lower().startswith("of "):
        subject.append(runs[1])
    named = {caption[s:e].lower() for run in subject for s, e in run}
    return {word for word in named if not word.endswith("ing")}


def _hit(explanation: Explanation | None, caption: str) -> bool:
    if explanation is None or not explanation.culprits:
        return False
    top = explanation.culprits[0]
    named = {caption[s:e].lower() for s, e in words(caption) if top.start <= s < top.end}
    return bool(named & subject_words(caption))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    args = parser.parse_args()
    from worker.demo.run import default_workdir, photo_samples, starter_bundle

    bundle = args.bundle or starter_bundle(default_workdir() / "bundles")
    loaded = load_bundle(bundle)
    threshold = loaded.spec.threshold
    scorer = OnnxScorer(loaded, providers=("cpu",), threshold=1.0)  # explain every one
    false = [s for s in photo_samples() if not s.expected_match]
    hits: list[tuple[bool, bool]] = []
    for sample in false:
        image = Image.open(io.BytesIO(sample.image)).convert("RGB")
        caption = sample.caption
        (score,) = (float(x) for x in scorer.score([image], [caption]))
        (explanation,) = explain_batch(scorer, [image], [caption], [score])
        hit = _hit(explanation, caption)
        hits.append((score < threshold, hit))
        top = explanation.culprits[0].text if explanation and explanation.culprits else "-"
        print(
            f"{'hit ' if hit else 'miss'} {score:.3f} {caption!r}: top {top!r}; "
            f"subject {sorted(subject_words(caption))}"
        )
    shown = [hit for flagged, hit in hits if flagged]
    print(
        f"flagged: {len(shown)} of {len(hits)} false captions; the top phrase names the "
        f"subject in {sum(shown)} of {len(shown)} ({sum(shown) / max(len(shown), 1):.0%})"
    )
    every = sum(hit for _, hit in hits)
    print(f"all false captions: {every} of {len(hits)} ({every / len(hits):.0%})")


if __name__ == "__main__":
    main()
