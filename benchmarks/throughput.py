"""How close the worker comes to its model alone, and to what a naive consumer reaches.

    .venv/bin/python -m benchmarks.throughput [--out DIR] [--soak-posts 100000]

One run, one machine, every figure from the same process tree:

1. model only: the starter bundle's pairs/s and latency at batch 1, 8, 32, 64;
2. PyTorch eager against ONNX Runtime on a BLIP ITM model (`--blip small|base`);
3. decode: images/s for 1080p and 4 MP JPEGs, worker path against naive;
4. end to end through a real broker, worker and Postgres on 1280×960 photo posts,
   with a cheap bundle (the tiny BLIP: the pipeline's own cost) and with the
   starter (model-bound): posts/s, CPU-ms per post, p50/p95/p99 from event time
   to durable verdict row;
5. the naive consumer (`benchmarks.naive_consumer`) on the same posts;
6. worker RSS over `--soak-posts` small posts with the cheap bundle;
7. good-post throughput with the poison corpus mixed in (`benchmarks.poison_throughput`).

Prints the tables and the target ratios, and writes `throughput.json` and
`throughput.png` to `--out` (default `throughput-results`). Needs the demo's
extras (`itmguard[cpu,demo,starter,export]`); builds the starter bundle on first
use, as `itmguard demo` does.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks import throughput_stack as e2e
from benchmarks.throughput_model import (
    blip_checkpoint,
    decode,
    model_only,
    photo_jpeg,
    torch_against_onnx,
)
from benchmarks.throughput_report import plot, tables, targets
from worker.testing import pooled_events, post_event


def _photos() -> tuple[list[Image.Image], list[tuple[int, str, bool]]]:
    """The demo's photos, decoded, and (photo, caption, true of it) for each caption."""
    from worker.demo.run import photo_samples

    pictures: list[Image.Image] = []
    labelled: list[tuple[int, str, bool]] = []
    seen: dict[bytes, int] = {}
    for sample in photo_samples():
        if sample.image not in seen:
            seen[sample.image] = len(pictures)
            pictures.append(Image.open(io.BytesIO(sample.image)).convert("RGB"))
        labelled.append((seen[sample.image], sample.caption, sample.expected_match))
    return pictures, labelled


FALSE_SHARE = 0.1
"""Share of photo posts whose caption is another photo's: most real posts match."""


def _photo_events(pictures: list[Image.Image], labelled: list[tuple[int, str, bool]]) -> e2e.Events:
    """Posts carrying 1280×960 JPEG photos inline, each with one of its own captions (or, for
    FALSE_SHARE of them, a false one), stamped with the time they are made."""
    jpegs = [photo_jpeg(p, (1280, 960)) for p in pictures]
    true = [(i, c) for i, c, is_true in labelled if is_true]
    false = [(i, c) for i, c, is_true in labelled if not is_true]
    rng = random.Random(7)

    def make(prefix: str, count: int) -> list[tuple[bytes | None, bytes]]:
        stamp = e2e.now_iso()
        out: list[tuple[bytes | None, bytes]] = []
        for i in range(count):
            post_id = f"{prefix}-{i:05d}"
            picture, caption = rng.choice(false if rng.random() < FALSE_SHARE else true)
            event = post_event(post_id, caption, jpegs[picture], created_at=stamp)
            out.append((post_id.encode(), event))
        return out

    return make


def _small_events(prefix: str, count: int) -> list[tuple[bytes | None, bytes]]:
    return pooled_events(count, prefix)


def _cheap_bundle(root: Path, events: e2e.Events) -> Path:
    """The tiny random BLIP, its threshold set so that it flags FALSE_SHARE of the photo
    posts, as a model that works would: a random model flags about all of them, and the
    review thumbnails of mismatches would then be most of what is measured."""
    from export.blip import export_blip
    from export.tiny import make_tiny_checkpoint
    from worker.bundle import load_bundle
    from worker.config import FetchLimits
    from worker.judge import judge_batches
    from worker.scoring import OnnxScorer
    from worker.testing import FakeFetcher, record_batches

    bundle = root / "cheap"
    export_blip(make_tiny_checkpoint(root / "cheap-ckpt"), bundle, progress=lambda _: None)
    scorer = OnnxScorer(load_bundle(bundle), providers=("cpu",), explain_variants=0)
    sample = record_batches([event for _, event in events("sample", 96)], 32)
    scores = [
        o.verdict.score
        for batch in judge_batches(sample, scorer, FakeFetcher(), FetchLimits())
        for o in batch
        if o.verdict is not None and o.verdict.score is not None
    ]
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["threshold"] = float(np.percentile(scores, 100 * FALSE_SHARE))
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    return bundle


def _renamed(bundle: Path, out: Path, name: str) -> Path:
    """A copy of `bundle` under another model name: the same model as a shadow of itself."""
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "bundle.json").read_text())
    (out / "bundle.json").write_text(json.dumps({**manifest, "name": name}))
    return out


def _end_to_end(
    root: Path, bundles: dict[str, Path], events: e2e.Events, args: argparse.Namespace
) -> dict[str, Any]:
    posts = {"cheap": args.cheap_posts, "starter": args.starter_posts}
    out: dict[str, Any] = {}
    with e2e.stack(root / "stack") as s:
        for name, bundle in bundles.items():
            env = e2e.worker_env(s, bundle, f"{name}-tp")
            worker = e2e.throughput(s, f"{name}-tp", events, posts[name], env=env)
            print(f"  {name}: worker {worker.posts_per_s:.1f} posts/s", flush=True)
            naive = e2e.throughput(
                s,
                f"{name}-nv",
                events,
                posts[name] // 4,
                command=e2e.naive_command(s, f"{name}-nv", bundle, posts[name] // 4),
            )
            print(f"  {name}: naive {naive.posts_per_s:.1f} posts/s", flush=True)
            rate = worker.posts_per_s * args.load
            env = e2e.worker_env(s, bundle, f"{name}-lt")
            paced = e2e.latency(s, f"{name}-lt", events, rate, args.latency_s, env)
            print(f"  {name}: latency at {rate:.1f} posts/s {paced.latency_ms}", flush=True)
            out[name] = {
                "worker": vars(worker),
                "naive": vars(naive),
                "paced": {**vars(paced), "offered_per_s": rate},
            }
        shadow = _renamed(bundles["starter"], root / "shadow", "starter-shadow")
        env = e2e.worker_env(s, bundles["starter"], "shadowed", ITMGUARD_SHADOW_BUNDLE=str(shadow))
        shadowed = e2e.throughput(s, "shadowed", events, posts["starter"], env=env)
        print(f"  starter with a shadow: {shadowed.posts_per_s:.1f} posts/s", flush=True)
        out["starter"]["shadowed"] = vars(shadowed)
        env = e2e.worker_env(s, bundles["starter"], "plain", ITMGUARD_EXPLAIN_VARIANTS="0")
        plain = e2e.throughput(s, "plain", events, posts["starter"], env=env)
        print(f"  starter without explanations: {plain.posts_per_s:.1f} posts/s", flush=True)
        out["starter"]["unexplained"] = vars(plain)
        if args.soak_posts:
            env = e2e.worker_env(s, bundles["cheap"], "soak", ITMGUARD_MAX_BATCH="64")
            soak = e2e.throughput(
                s,
                "soak",
                _small_events,
                args.soak_posts,
                env=env,
                rss_every=args.soak_posts // 20,
                limit_s=3600,
            )
            out["soak"] = vars(soak)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("throughput-results"))
    parser.add_argument("--blip", choices=("small", "base"), default="small")
    parser.add_argument("--cheap-posts", type=int, default=2000)
    parser.add_argument("--starter-posts", type=int, default=640)
    parser.add_argument("--latency-s", type=float, default=20.0)
    parser.add_argument("--load", type=float, default=0.7, help="paced rate ÷ worker's rate")
    parser.add_argument("--soak-posts", type=int, default=100_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="itmguard-throughput-"))
    started = time.monotonic()

    from worker.bundle import load_bundle
    from worker.demo.run import default_workdir, starter_bundle
    from worker.scoring import OnnxScorer

    pictures, labelled = _photos()
    captions = [caption for _, caption, _ in labelled]
    events = _photo_events(pictures, labelled)
    bundles = {
        "cheap": _cheap_bundle(root, events),
        "starter": starter_bundle(default_workdir() / "bundles"),
    }
    starter = OnnxScorer(load_bundle(bundles["starter"]), providers=("cpu",))
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count()},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print("model only (starter) ...", flush=True)
    results["model_only"] = model_only(starter, pictures, captions)
    print("decode ...", flush=True)
    results["decode"] = decode(pictures, starter.bundle.spec.image)
    print("poison ...", flush=True)
    from benchmarks.poison_throughput import measure

    results["poison"] = measure(starter)
    del starter
    print(f"PyTorch against ONNX Runtime (BLIP {args.blip}) ...", flush=True)
    from export.blip import export_blip

    checkpoint = blip_checkpoint(root / "blip-ckpt", args.blip)
    export_blip(checkpoint, root / "blip", max_text_tokens=35, progress=lambda _: None)
    results["torch_onnx"] = torch_against_onnx(
        checkpoint, root / "blip", threads=os.cpu_count() or 1
    )
    results["torch_onnx"]["size"] = args.blip
    print("end to end ...", flush=True)
    results["end_to_end"] = _end_to_end(root, bundles, events, args)
    results["seconds"] = time.monotonic() - started
    results["targets"] = targets(results)
    (args.out / "throughput.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "throughput.png")
    print(tables(results))
    print(f"written: {args.out / 'throughput.json'}, {args.out / 'throughput.png'}")


if __name__ == "__main__":
    main()
