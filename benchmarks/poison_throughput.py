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
    limits = FetchLimits(max_bytes=1_000_000)
    good = [payload for _, payload in pooled_events(500, "good", seed=4)]
    bad = [payload for _, _, payload in poison_corpus()]
    mixed: list[bytes] = []
    for i in range(max(len(good), len(bad))):
        mixed += good[i : i + 1] + bad[i : i + 1]
    _run(good[:64], scorer, limits, args.batch)  # warm-up
    clean = min(_run(good, scorer, limits, args.batch) for _ in range(args.repeat))
    poisoned = min(_run(mixed, scorer, limits, args.batch) for _ in range(args.repeat))
    clean_rate, mixed_rate = len(good) / clean, len(good) / poisoned
    print(f"model {scorer.model_id}, batch {args.batch}, best of {args.repeat}")
    print(f"clean: {len(good)} good events in {clean:.2f}s = {clean_rate:.0f} good events/s")
    print(
        f"mixed: {len(good)} good + {len(bad)} bad in {poisoned:.2f}s "
        f"= {mixed_rate:.0f} good events/s"
    )
    print(f"ratio mixed/clean: {mixed_rate / clean_rate:.2f} (target >= 0.80)")


if __name__ == "__main__":
    main()
