"""Resident memory and batch time of the CPU scorer under its container settings.

Each setting runs in a fresh process: the default (ONNX Runtime's thread count and
memory arena), `ITMGUARD_CPU_MEMORY_ARENA=false`, and `ITMGUARD_CPU_THREADS=1`. Each
scores the same 352 events through the worker's parse-and-score path in batches
of 32 (one warm-up batch, then ten timed), and the script prints peak RSS, the
part of it the model added, and the median time per batch, with ratios against
the default.

    .venv/bin/python -m benchmarks.cpu_settings [--bundle DIR]

Without --bundle it uses the demo's starter bundle, building it on first use.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "default": {"cpu_threads": 0, "cpu_memory_arena": True},
    "arena off": {"cpu_threads": 0, "cpu_memory_arena": False},
    "1 thread": {"cpu_threads": 1, "cpu_memory_arena": True},
}
BATCH = 32
TIMED_BATCHES = 10


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(bundle: Path, cpu_threads: int, cpu_memory_arena: bool) -> dict[str, float]:
    """One setting, in this process: what the scorer costs to hold and to call."""
    from worker.bundle import load_bundle
    from worker.config import FetchLimits
    from worker.judge import judge_batches
    from worker.scoring import OnnxScorer
    from worker.testing import FakeFetcher, pooled_events, record_batches

    events = [payload for _, payload in pooled_events(BATCH * (TIMED_BATCHES + 1), "bench")]
    before = _peak_rss_mib()
    scorer = OnnxScorer(
        load_bundle(bundle),
        providers=("cpu",),
        cpu_threads=cpu_threads,
        cpu_memory_arena=cpu_memory_arena,
    )
    limits = FetchLimits()
    batches = judge_batches(record_batches(events, BATCH), scorer, FakeFetcher(), limits)
    times = []
    while True:
        started = time.perf_counter()
        if next(batches, None) is None:
            break
        times.append(time.perf_counter() - started)
    peak = _peak_rss_mib()
    return {
        "peak_mib": peak,
        "model_mib": peak - before,
        "ms_per_batch": 1000 * statistics.median(times[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.bundle, **VARIANTS[args.child])))
        return
    bundle = args.bundle
    if bundle is None:
        from worker.demo.run import default_workdir, starter_bundle

        bundle = starter_bundle(default_workdir() / "bundles")
    results = {}
    for name in VARIANTS:
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.cpu_settings",
                "--child",
                name,
                "--bundle",
                str(bundle),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
    base = results["default"]
    print(f"bundle {bundle}, {TIMED_BATCHES} timed batches of {BATCH}, a fresh process per setting")
    for name, r in results.items():
        print(
            f"{name:10s} peak RSS {r['peak_mib']:6.0f} MiB "
            f"({r['model_mib']:5.0f} MiB for the model, "
            f"x{r['model_mib'] / base['model_mib']:.2f})  "
            f"{r['ms_per_batch']:6.0f} ms/batch (x{r['ms_per_batch'] / base['ms_per_batch']:.2f})"
        )


if __name__ == "__main__":
    main()
