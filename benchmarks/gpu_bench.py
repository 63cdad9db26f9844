"""One measurement of the GPU check, run in the check's runtime environment (the `gpu` extra,
no torch), each in a fresh process so that a crash or a time-out costs one row only.

    python -m benchmarks.gpu_bench speed --config trt-fp16 --bundle DIR --out FILE.json
    python -m benchmarks.gpu_bench e2e --config trt-fp16 --bundle DIR --out FILE.json

`speed` opens the bundle as the worker does (`OnnxScorer`: provider options, engine cache key,
IO binding), times the start (session opening plus warm-up: on TensorRT the engine build, or
its load from the cache), scores the parity set for the decision-agreement figures, then times
model calls at each batch size on preprocessed inputs until its time budget runs out.
`e2e` runs the worker's scoring path (`worker.judge`: parse, decode the JPEGs on this machine's
CPU cores, preprocess, score) over generated posts and gives posts per second.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.bundle import load_bundle
from worker.config import DEFAULT_TENSORRT, FetchLimits, TensorRtTuning
from worker.judge import judge_batches
from worker.runtime import engine_seconds, warm_up
from worker.scoring import OnnxScorer
from worker.testing import COLOURS, SHAPES, FakeFetcher, post_event, record_batches, shape_image


@dataclass(frozen=True)
class Config:
    """One way of running the model: providers, the one required, TensorRT's precision."""

    providers: tuple[str, ...]
    require: str
    tensorrt: TensorRtTuning = DEFAULT_TENSORRT


CONFIGS = {
    "cpu": Config(("cpu",), "cpu"),
    "cuda-fp32": Config(("cuda", "cpu"), "cuda"),
    "cuda-fp16": Config(("cuda", "cpu"), "cuda"),
    "trt-fp16": Config(("tensorrt", "cuda", "cpu"), "tensorrt", TensorRtTuning(fp16=True)),
}
"""cuda-fp16 differs from cuda-fp32 by its bundle (the fp16 graph), which the caller picks."""

LONG_CAPTION = "a photo of " + "a red circle beside a blue square and " * 20
MIN_TIMED_S = 1.0
MAX_RUNS = 30


def open_scorer(config: str, bundle: Path, cache: Path) -> OnnxScorer:
    chosen = CONFIGS[config]
    return OnnxScorer(
        load_bundle(bundle),
        providers=chosen.providers,
        require_provider=chosen.require,
        trt_cache_dir=cache,
        tensorrt=chosen.tensorrt,
    )


def inputs(scorer: OnnxScorer, batch: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Random pictures (speed does not depend on them) and captions of the longest length."""
    spec = scorer.bundle.spec
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((batch, 3, spec.image.height, spec.image.width), np.float32)
    ids, mask = scorer.bundle.text_encoder().encode([LONG_CAPTION] * batch)
    return pixels, ids, mask


def time_batch(scorer: OnnxScorer, batch: int) -> dict[str, Any]:
    """Median and 90th-percentile latency of model calls at `batch`, after two untimed ones."""
    pixels, ids, mask = inputs(scorer, batch)
    for _ in range(2):
        scorer.infer(pixels, ids, mask)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - started < MIN_TIMED_S and len(times) < MAX_RUNS):
        call = time.perf_counter()
        scorer.infer(pixels, ids, mask)
        times.append(time.perf_counter() - call)
    median = statistics.median(times)
    return {
        "batch": batch,
        "sequence": int(ids.shape[1]),
        "latency_ms": round(median * 1000, 2),
        "p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))] * 1000, 2),
        "pairs_per_s": round(batch / median, 1),
        "runs": len(times),
    }


def parity_scores(scorer: OnnxScorer, parity: Path) -> list[float]:
    """Match probabilities on the parity set saved by `benchmarks.gpu_export`."""
    saved = np.load(parity)
    scores: list[float] = []
    names = scorer.bundle.spec.input_names
    index = 0
    while f"input_ids_{index}" in saved:
        feed = {role: saved[f"{role}_{index}"] for role in names}
        scores += scorer.infer(
            feed["pixel_values"], feed["input_ids"], feed["attention_mask"]
        ).tolist()
        index += 1
    return scores


def speed(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.budget_s
    started = time.perf_counter()
    scorer = open_scorer(args.config, args.bundle, args.cache)
    _, warmup_s = warm_up(scorer, max_batch=max(args.batches))
    result: dict[str, Any] = {
        "config": args.config,
        "provider": scorer.provider,
        "engine_cache": scorer.engine_cache,
        "engine_dir": str(scorer.engine_dir) if scorer.engine_dir else None,
        "open_s": round(scorer.open_seconds, 2),
        "warmup_s": round(warmup_s, 2),
        "engine_s": round(engine_seconds(scorer, warmup_s), 2),
        "start_s": round(time.perf_counter() - started, 2),
        "threshold": scorer.threshold,
        "rows": [],
        "skipped": [],
    }
    if args.parity is not None:
        result["parity_scores"] = parity_scores(scorer, args.parity)
    last: dict[str, Any] | None = None
    for batch in args.batches:
        expected = 0.0 if last is None else last["latency_ms"] / 1000 * batch / last["batch"]
        if time.monotonic() + max(MIN_TIMED_S, 5 * expected) > deadline:
            result["skipped"].append(batch)
            continue
        last = time_batch(scorer, batch)
        result["rows"].append(last)
        print(json.dumps(last), flush=True)
    return result


def jpeg_posts(n: int, *, size: int) -> list[bytes]:
    """`n` post events carrying JPEG photos of about `size` pixels a side; half the captions
    lie. A pool of 64 pictures is reused, as decoding costs the same for each."""
    pool = []
    for i in range(64):
        colour, shape = list(COLOURS)[i % len(COLOURS)], SHAPES[i % len(SHAPES)]
        picture = _as_jpeg(shape_image(colour, shape, size=size, seed=i))
        pool.append((f"a {colour} {shape}" if i % 2 else "a green house", picture))
    return [post_event(f"e2e-{i:06d}", *pool[i % len(pool)]) for i in range(n)]


def _as_jpeg(data: bytes) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def e2e(args: argparse.Namespace) -> dict[str, Any]:
    scorer = open_scorer(args.config, args.bundle, args.cache)
    warm_up(scorer, max_batch=args.batch)
    limits = FetchLimits()
    posts = jpeg_posts(args.events, size=args.image_px)
    for _ in judge_batches(
        record_batches(posts[: args.batch], args.batch), scorer, FakeFetcher(), limits
    ):
        pass
    started = time.perf_counter()
    done = 0
    while not done or time.perf_counter() - started < args.budget_s / 2:
        batches = record_batches(posts, args.batch)
        for outcomes in judge_batches(batches, scorer, FakeFetcher(), limits):
            done += len(outcomes)
            if time.perf_counter() - started > args.budget_s:
                break
    seconds = time.perf_counter() - started
    return {
        "config": args.config,
        "provider": scorer.provider,
        "batch": args.batch,
        "posts": done,
        "seconds": round(seconds, 2),
        "posts_per_s": round(done / seconds, 1),
        "cpu_cores": os.cpu_count(),
        "image_px": args.image_px,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("speed", "e2e"))
    parser.add_argument("--config", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True, help="TensorRT engine cache")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", type=lambda t: [int(b) for b in t.split(",")])
    parser.add_argument("--parity", type=Path, help="parity.npz: score it for agreement")
    parser.add_argument("--budget-s", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=64, help="e2e: posts per batch")
    parser.add_argument("--events", type=int, default=2048, help="e2e: posts per round")
    parser.add_argument("--image-px", type=int, default=480, help="e2e: photo side")
    args = parser.parse_args()
    args.batches = args.batches or [1, 8, 32, 64, 128]
    result = speed(args) if args.stage == "speed" else e2e(args)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
