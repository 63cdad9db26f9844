"""Good-event throughput of the scoring path with and without poison input mixed in.

Runs `worker.judge` (the worker's path minus Kafka and SQL,
which cost the same per event either way) over the same 500 good events, once
alone and once interleaved with the 523-event poison corpus, in batches of 32,
and prints good events per second for both and their ratio. Target: the mixed
run keeps at least 80% of the clean run's good-event throughput.

    .venv/bin/python -m benchmarks.poison_throughput --bundle DIR [--repeat 3]

Without --bundle it exports the tiny random BLIP checkpoint the tests use.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from worker.bundle import load_bundle
from worker.config import FetchLimits
from worker.judge import judge_batches
from worker.scoring import OnnxScorer
from worker.testing import FakeFetcher, poison_corpus, pooled_events, record_batches


def _run(payloads: list[bytes], scorer: OnnxScorer, limits: FetchLimits, batch: int) -> float:
    started = time.perf_counter()
    for _ in judge_batches(record_batches(payloads, batch), scorer, FakeFetcher(), limits):
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    bundle = args.bundle
    if bundle is None:
        from export.blip import export_blip
        from export.tiny import make_tiny_checkpoint

        root = Path(tempfile.mkdtemp())
        bundle = root / "bundle"
        export_blip(make_tiny_checkpoint(root / "ckpt"), bundle, progress=lambda _: None)
    scorer = OnnxScorer(load_bundle(bundle), providers=("cpu",))
    figures = measure(scorer, args.batch, args.repeat)
    print(f"model {scorer.model_id}, batch {args.batch}, best of {args.repeat}")
    print(
        f"clean: {figures['good']} good events in {figures['clean_s']:.2f}s "
        f"= {figures['clean_per_s']:.0f} good events/s"
    )
    print(
        f"mixed: {figures['good']} good + {figures['bad']} bad in {figures['mixed_s']:.2f}s "
        f"= {figures['mixed_per_s']:.0f} good events/s"
    )
    print(f"ratio mixed/clean: {figures['ratio']:.2f} (target >= 0.80)")


def measure(scorer: OnnxScorer, batch: int = 32, repeat: int = 3) -> dict[str, float]:
    """Good events per second alone and with the poison corpus interleaved, best of
    `repeat` runs each, and their ratio."""
    limits = FetchLimits(max_bytes=1_000_000)
    good = [payload for _, payload in pooled_events(500, "good", seed=4)]
    bad = [payload for _, _, payload in poison_corpus()]
    mixed: list[bytes] = []
    for i in range(max(len(good), len(bad))):
        mixed += good[i : i + 1] + bad[i : i + 1]
    _run(good[:64], scorer, limits, batch)  # warm-up
    clean = min(_run(good, scorer, limits, batch) for _ in range(repeat))
    poisoned = min(_run(mixed, scorer, limits, batch) for _ in range(repeat))
    return {
        "good": len(good),
        "bad": len(bad),
        "clean_s": clean,
        "mixed_s": poisoned,
        "clean_per_s": len(good) / clean,
        "mixed_per_s": len(good) / poisoned,
        "ratio": clean / poisoned,
    }


if __name__ == "__main__":
    main()
