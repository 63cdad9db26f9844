"""The GPU check's Markdown report, from the JSON files its stages left in one folder.

Standard library only, so that the report is written whatever else failed: a stage that
failed or ran out of time shows as a row of the stages table with the end of its log, and the
figures that needed it read "not measured".

    python3 benchmarks/gpu_report.py RESULTS_DIR OUT.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GFLOP_PER_PAIR = 135.0
"""BLIP ITM base at 384 px: ViT-B/16 over 577 tokens plus the BERT-base cross-encoder."""

PEAK_TFLOPS = (
    ("H200", 989.0, 494.0),
    ("H100 PCIe", 756.0, 378.0),
    ("H100 NVL", 835.0, 418.0),
    ("H100", 989.0, 494.0),
    ("A100", 312.0, 156.0),
    ("L40S", 362.0, 183.0),
    ("L4", 121.0, 60.0),
)
"""Dense fp16 and TF32 tensor-core peaks (TFLOP/s, no sparsity) by GPU name, first match."""

CONFIGS = ("cpu", "cuda-fp32", "cuda-fp16", "trt-fp16")
TARGETS = {"trt_vs_cuda": 3.0, "agreement": 0.995, "warm_vs_cold": 10.0}


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _rate(result: Any, batch: int) -> float | None:
    rows = (result or {}).get("rows", [])
    return next((float(r["pairs_per_s"]) for r in rows if r["batch"] == batch), None)


def _agreement(candidate: Any, reference: Any) -> tuple[float, int] | None:
    """Share of parity-set decisions `candidate` makes as `reference` does, and the pairs."""
    if not candidate or not reference:
        return None
    a, b = candidate.get("parity_scores"), reference.get("parity_scores")
    if not a or not b or len(a) != len(b):
        return None
    threshold = float(reference["threshold"])
    same = sum((x >= threshold) == (y >= threshold) for x, y in zip(a, b, strict=True))
    return same / len(a), len(a)


def _peaks(gpu: str) -> tuple[float, float] | None:
    return next(((fp16, tf32) for key, fp16, tf32 in PEAK_TFLOPS if key in gpu), None)


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value >= target else "missed"


def _fmt(value: float | None, pattern: str) -> str:
    return "not measured" if value is None else pattern.format(value)


def targets(results: dict[str, Any], gpu: str) -> list[str]:
    """The targets the check is held to, each with its measured value."""
    trt, fp32 = results.get("trt-fp16"), results.get("cuda-fp32")
    trt64, cuda64 = _rate(trt, 64), _rate(fp32, 64)
    speedup = trt64 / cuda64 if trt64 and cuda64 else None
    agreements = {name: _agreement(results.get(name), fp32) for name in ("cuda-fp16", "trt-fp16")}
    cold, warm = results.get("trt-cold"), results.get("trt-fp16")
    cold_s = (cold or {}).get("engine_s") if (cold or {}).get("engine_cache") == "cold" else None
    warm_s = (warm or {}).get("engine_s") if (warm or {}).get("engine_cache") == "warm" else None
    start_ratio = cold_s / warm_s if cold_s and warm_s else None
    lines = [
        "| target | measured | goal | |",
        "|---|---|---|---|",
        f"| TensorRT fp16 ÷ CUDA fp32, pairs/s at batch 64 | {_fmt(speedup, '{:.2f}×')} "
        f"({_fmt(trt64, '{:.0f}')} vs {_fmt(cuda64, '{:.0f}')}) | ≥ 3× | "
        f"{_verdict(speedup, TARGETS['trt_vs_cuda'])} |",
    ]
    for name, label in (("cuda-fp16", "CUDA fp16"), ("trt-fp16", "TensorRT fp16")):
        agreed = agreements[name]
        shown = "not measured" if agreed is None else f"{agreed[0]:.1%} of {agreed[1]} pairs"
        lines.append(
            f"| {label} decisions agreeing with CUDA fp32 on the parity set | {shown} | "
            f"≥ 99.5% | {_verdict(None if agreed is None else agreed[0], TARGETS['agreement'])} |"
        )
    lines.append(
        f"| TensorRT start, cold engine build ÷ warm cache | {_fmt(start_ratio, '{:.1f}×')} "
        f"({_fmt(cold_s, '{:.1f} s')} vs {_fmt(warm_s, '{:.1f} s')}) | ≥ 10× | "
        f"{_verdict(start_ratio, TARGETS['warm_vs_cold'])} |"
    )
    lines += arithmetic(results, gpu)
    return lines


def arithmetic(results: dict[str, Any], gpu: str) -> list[str]:
    """Best pairs/s of each GPU configuration as TFLOP/s, against the GPU's tensor-core peak."""
    peaks = _peaks(gpu)
    lines = []
    for name, label, index in (
        ("cuda-fp32", "CUDA fp32 (TF32 peak)", 1),
        ("cuda-fp16", "CUDA fp16", 0),
        ("trt-fp16", "TensorRT fp16", 0),
    ):
        rows = (results.get(name) or {}).get("rows", [])
        if not rows:
            continue
        best = max(rows, key=lambda r: r["pairs_per_s"])
        tflops = best["pairs_per_s"] * GFLOP_PER_PAIR / 1000
        share = f", {tflops / peaks[index]:.0%} of {peaks[index]:.0f}" if peaks else ""
        lines.append(
            f"| {label}: best pairs/s × {GFLOP_PER_PAIR:.0f} GFLOP | {best['pairs_per_s']:.0f} "
            f"pairs/s at batch {best['batch']} = {tflops:.0f} TFLOP/s{share} | (report) | |"
        )
    return lines


def speed_table(results: dict[str, Any]) -> list[str]:
    batches = sorted({r["batch"] for c in CONFIGS for r in (results.get(c) or {}).get("rows", [])})
    present = [c for c in CONFIGS if c in results]
    lines = [
        "| batch | " + " | ".join(present) + " |",
        "|---|" + "---|" * len(present),
    ]
    for batch in batches:
        cells = []
        for name in present:
            row = next((r for r in results[name].get("rows", []) if r["batch"] == batch), None)
            skipped = batch in results[name].get("skipped", [])
            cells.append(
                f"{row['pairs_per_s']:.0f} pairs/s, {row['latency_ms']:.1f} ms "
                f"(p90 {row['p90_ms']:.1f})"
                if row
                else ("skipped (time budget)" if skipped else "—")
            )
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    return lines


def starts_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| run | provider | engine cache | session open | warm-up | engine total |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("trt-cold", *CONFIGS):
        r = results.get(name)
        if r and "open_s" in r:
            lines.append(
                f"| {name} | {r['provider']} | {r['engine_cache'] or '—'} | {r['open_s']:.2f} s | "
                f"{r['warmup_s']:.2f} s | {r['engine_s']:.2f} s |"
            )
    return lines


def stages_table(folder: Path) -> list[str]:
    lines = ["| stage | exit | seconds | end of its log |", "|---|---|---|---|"]
    tsv = folder / "stages.tsv"
    for line in tsv.read_text(encoding="utf-8").splitlines() if tsv.exists() else []:
        name, rc, seconds = [*line.split("\t"), "", "", ""][:3]
        tail = ""
        if rc != "0":
            log = folder / f"{name}.log"
            text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
            last = [t.strip() for t in text.splitlines() if t.strip()][-3:]
            tail = " / ".join(last).replace("|", "\\|")[:400]
            if rc == "124":
                tail = f"timed out; {tail}"
        lines.append(f"| {name} | {rc} | {seconds} | {tail} |")
    return lines


def report(folder: Path) -> str:
    results = {name: _load(folder / f"{name}.json") for name in (*CONFIGS, "trt-cold")}
    results = {k: v for k, v in results.items() if v}
    gpu_line = (folder / "gpu.txt").read_text().strip() if (folder / "gpu.txt").exists() else ""
    gpu = gpu_line.split(",")[0].strip() or "no GPU found"
    model = _load(folder / "export.json") or {}
    e2e = _load(folder / "e2e.json")
    versions = (
        (folder / "versions.txt").read_text().strip() if (folder / "versions.txt").exists() else ""
    )
    out = [
        f"# GPU check: {gpu}",
        "",
        "Written by `benchmarks/gpu_check.sh`. Model: "
        + (
            f"`{model['model_id']}` ({model['image'][0]} px, captions up to {model['max_tokens']} "
            f"tokens, model.onnx {model['model_mib']} MiB, random weights), exported in "
            f"{model['export_s']} s."
            if model
            else "not exported."
        ),
        "",
        f"- GPU (name, compute capability, driver, memory): {gpu_line or 'not found'}",
        f"- CPU cores: {(e2e or {}).get('cpu_cores', 'unknown')}",
        f"- Packages: {versions or 'unknown'}",
        "",
        "## Targets",
        "",
        *targets(results, gpu),
        "",
        "## Pairs per second and latency per model call",
        "",
        "Preprocessed inputs, captions at the bundle's longest; median of at least three timed "
        "calls after two untimed ones (p90 in brackets).",
        "",
        *speed_table(results),
        "",
        "## Starts",
        "",
        "Session opening plus the warm-up batch. `trt-cold` starts with an empty engine cache; "
        "`trt-fp16` is a fresh process on the cache `trt-cold` filled (the warm start).",
        "",
        *starts_table(results),
        "",
        "## End to end",
        "",
        (
            f"`worker.judge` with {e2e['config']} ({e2e['provider']}), batches of {e2e['batch']}: "
            f"{e2e['posts_per_s']:.0f} posts/s over {e2e['posts']} posts carrying "
            f"{e2e['image_px']} px JPEGs, decoded on {e2e['cpu_cores']} CPU cores."
            if e2e
            else "not measured."
        ),
        "",
        "## Stages",
        "",
        *stages_table(folder),
        "",
    ]
    return "\n".join(out)


def main() -> None:
    folder, target = Path(sys.argv[1]), Path(sys.argv[2])
    target.write_text(report(folder), encoding="utf-8")
    print(f"report: {target}")


if __name__ == "__main__":
    main()
