"""What explanations cost: scoring time per batch of 32 with 5% of posts flagged.

Each batch holds 32 of the starter set's photos with their true captions, except for
one or two (1.6 on average, 5%) given a false caption and treated as flagged. The
batch is scored in one model call, as the worker scores it, and then its flagged
posts are explained (`worker.explain.explain_batch`, `ITMGUARD_EXPLAIN_VARIANTS`
variants each, default 8), once through a one-graph bundle and once through the
same bundle's two graphs. The script prints, for each, the median time of the
primary score and of the explanations per batch (each with its preprocessing and
tokenising: the model's time and what feeds it), the explanations' share of the
batch's scoring time, and the extra time per flagged post.

    .venv/bin/python -m benchmarks.explain_cost [--bundle DIR] [--batches N]

--bundle is a two-graph starter bundle (`itmguard export starter` writes both forms);
without it, the demo's starter bundle, built on first use. The one-graph bundle is
the same model.onnx with bundle.json's `graphs` left out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 32
FLAGGED = (2, 1, 2, 2, 1)
"""Flagged posts per batch, in turn: 1.6 of 32 on average, 5%."""


def _one_graph_copy(bundle: Path, into: Path) -> Path:
    """`bundle` without its two-graph form: the same model.onnx, bundle.json without
    `graphs`."""
    out = into / "one-graph"
    out.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (out / name).symlink_to((bundle / name).resolve())
    manifest = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    manifest.pop("graphs", None)
    (out / "bundle.json").write_text(json.dumps(manifest), encoding="utf-8")
    return out


def _batches(n: int) -> list[tuple[list[Any], list[str], list[int]]]:
    """`n` batches of (pictures, captions, indices of the flagged posts)."""
    import io

    from PIL import Image

    from worker.demo.run import photo_samples

    samples = photo_samples()
    pairs = [(samples[i], samples[i + 1]) for i in range(0, len(samples), 2)]
    pictures = {id(t): Image.open(io.BytesIO(t.image)).convert("RGB") for t, _ in pairs}
    out = []
    for b in range(n):
        chosen = [pairs[(b * BATCH + i) % len(pairs)] for i in range(BATCH)]
        flagged = [(b * 5 + j * BATCH // 2) % BATCH for j in range(FLAGGED[b % len(FLAGGED)])]
        captions = [
            false.caption if i in flagged else true.caption
            for i, (true, false) in enumerate(chosen)
        ]
        out.append(([pictures[id(t)] for t, _ in chosen], captions, flagged))
    return out


def _measure(
    bundle: Path, batches: list[tuple[list[Any], list[str], list[int]]]
) -> dict[str, float]:
    from worker.bundle import load_bundle
    from worker.explain import explain_batch
    from worker.scoring import OnnxScorer

    loaded = load_bundle(bundle)
    scorer = OnnxScorer(loaded, providers=("cpu",))
    primary, explain, flagged_total = [], [], 0
    for n, (images, captions, flagged) in enumerate(batches):
        started = time.perf_counter()
        scores = [float(s) for s in scorer.score(images, captions)]
        middle = time.perf_counter()
        # the flagged posts are the ones given a false caption, whatever the model made of them
        forced = [
            min(s, scorer.threshold / 2) if i in flagged else 1.0 for i, s in enumerate(scores)
        ]
        explained = explain_batch(scorer, images, captions, forced)
        ended = time.perf_counter()
        assert sum(e is not None for e in explained) == len(flagged)
        if n:  # the first batch warms the sessions up
            primary.append(middle - started)
            explain.append(ended - middle)
            flagged_total += len(flagged)
    return {
        "primary_ms": statistics.median(primary) * 1000,
        "explain_ms": statistics.median(explain) * 1000,
        "share": sum(explain) / (sum(primary) + sum(explain)),
        "per_flagged_ms": sum(explain) / flagged_total * 1000,
        "graphs": 1 if loaded.spec.graphs is None else 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--batches", type=int, default=11)
    args = parser.parse_args()
    bundle = args.bundle
    if bundle is None:
        from worker.demo.run import default_workdir, starter_bundle

        bundle = starter_bundle(default_workdir() / "bundles")
    batches = _batches(args.batches)
    work = Path(tempfile.mkdtemp(prefix="explain-cost-"))
    try:
        figures = {
            "one-graph": _measure(_one_graph_copy(bundle, work), batches),
            "two-graph": _measure(bundle, batches),
        }
    finally:
        shutil.rmtree(work)
    flagged = sum(len(f) for _, _, f in batches[1:]) / (len(batches) - 1)
    print(f"batches of {BATCH}, {flagged:.1f} flagged on average ({flagged / BATCH:.0%})")
    for name, f in figures.items():
        print(
            f"{name}: primary {f['primary_ms']:.0f} ms, explanations {f['explain_ms']:.0f} ms "
            f"per batch (medians); explanations' share of scoring time {f['share']:.1%}; "
            f"{f['per_flagged_ms']:.0f} ms per flagged post"
        )


if __name__ == "__main__":
    main()
