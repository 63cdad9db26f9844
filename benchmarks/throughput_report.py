"""Tables, target ratios and the plot of one `benchmarks.throughput` run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGETS = (
    ("end to end ÷ model only, starter, batch 32", 0.90),
    ("the same, caption explanations off", 0.90),
    ("end to end ÷ naive consumer, cheap bundle", 5.0),
    ("end to end ÷ naive consumer, starter", 1.5),
    ("draft decode ÷ naive decode, 4 MP", 3.0),
    ("ONNX Runtime ÷ PyTorch, batch 32", 1.5),
    ("worker RSS growth over the soak (at most)", 0.10),
    ("poison mixed ÷ clean, good posts", 0.80),
)


def _ratios(r: dict[str, Any]) -> list[float | None]:
    e2e = r["end_to_end"]
    model32 = next(m for m in r["model_only"] if m["batch"] == 32)["pairs_per_s"]
    four_mp = next(d for d in r["decode"] if d["size"] == "4 MP")["ratio"]
    growth = None
    if e2e.get("soak") and e2e["soak"]["rss_mib"]:
        samples = e2e["soak"]["rss_mib"]
        settled = samples[min(1, len(samples) - 1)][1]
        growth = (max(mib for _, mib in samples) - settled) / settled
    return [
        e2e["starter"]["worker"]["posts_per_s"] / model32,
        e2e["starter"]["unexplained"]["posts_per_s"] / model32,
        e2e["cheap"]["worker"]["posts_per_s"] / e2e["cheap"]["naive"]["posts_per_s"],
        e2e["starter"]["worker"]["posts_per_s"] / e2e["starter"]["naive"]["posts_per_s"],
        four_mp,
        r["torch_onnx"]["ratio"],
        growth,
        r["poison"]["ratio"],
    ]


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured ratio and whether it was met."""
    out = []
    for (name, goal), value in zip(TARGETS, _ratios(r), strict=True):
        at_most = "at most" in name
        met = None if value is None else (value <= goal if at_most else value >= goal)
        out.append({"target": name, "goal": goal, "measured": value, "met": met})
    return out


def tables(r: dict[str, Any]) -> str:
    """The run as Markdown tables, as docs/performance.md shows them."""
    lines = ["### Model only (starter bundle, pictures pre-decoded)", ""]
    lines += ["| batch | pairs/s | latency ms |", "|---:|---:|---:|"]
    lines += [
        f"| {m['batch']} | {m['pairs_per_s']:.1f} | {m['latency_ms']:.1f} |"
        for m in r["model_only"]
    ]
    t = r["torch_onnx"]
    lines += [
        "",
        f"### PyTorch eager against ONNX Runtime (BLIP {t['size']}, "
        f"batch {t['batch']}, {t['threads']} threads)",
        "",
    ]
    lines += ["| runtime | pairs/s | ÷ PyTorch |", "|---|---:|---:|"]
    lines += [
        f"| PyTorch eager | {t['torch_pairs_per_s']:.2f} | 1.00 |",
        f"| ONNX Runtime | {t['onnx_pairs_per_s']:.2f} | {t['ratio']:.2f} |",
        f"| ONNX Runtime, dynamic int8 | {t['onnx_int8_pairs_per_s']:.2f} | "
        f"{t['ratio_int8']:.2f} |",
    ]
    lines += [
        "",
        f"Largest score difference between PyTorch and ONNX Runtime: {t['max_score_diff']:.1e}; "
        f"int8 verdicts agree with fp32 on {t['int8_verdicts_agree']:.0%} of the batch "
        "(random weights put scores near the threshold, the hardest case for agreement).",
    ]
    lines += [
        "",
        "### Decode (one thread)",
        "",
        "| JPEG | worker images/s | naive images/s | ratio |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {d['size']} | {d['worker_per_s']:.1f} | {d['naive_per_s']:.1f} | {d['ratio']:.2f} |"
        for d in r["decode"]
    ]
    e2e = r["end_to_end"]
    lines += ["", "### End to end (broker, worker, Postgres; 1280×960 photo posts)", ""]
    lines += [
        "| bundle | consumer | posts/s | CPU-ms/post | flagged | p50 ms | p95 ms | "
        "p99 ms (paced at) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("cheap", "starter"):
        w, n, p = e2e[name]["worker"], e2e[name]["naive"], e2e[name]["paced"]
        lat = p["latency_ms"]
        lines.append(
            f"| {name} | worker | {w['posts_per_s']:.1f} | {w['cpu_ms_per_post']:.1f} | "
            f"{w['flagged_share']:.0%} | {lat['p50']:.0f} | {lat['p95']:.0f} | "
            f"{lat['p99']:.0f} ({p['offered_per_s']:.1f}/s) |"
        )
        lines.append(
            f"| {name} | naive | {n['posts_per_s']:.1f} | {n['cpu_ms_per_post']:.1f} | "
            f"{n['flagged_share']:.0%} | | | |"
        )
    plain = e2e["starter"]["unexplained"]
    lines += [
        "",
        f"The starter with caption explanations off (`ITMGUARD_EXPLAIN_VARIANTS=0`): "
        f"{plain['posts_per_s']:.1f} posts/s, {plain['cpu_ms_per_post']:.1f} CPU-ms per post.",
    ]
    shadowed = e2e["starter"]["shadowed"]
    alone = e2e["starter"]["worker"]["posts_per_s"]
    lines += [
        "",
        "### The cost of a shadow",
        "",
        f"The starter with a copy of itself as shadow: {shadowed['posts_per_s']:.1f} posts/s, "
        f"{shadowed['posts_per_s'] / alone:.2f} of its {alone:.1f} posts/s alone; the shadow "
        f"gave verdicts for {shadowed['shadow_posts']:,} of the {shadowed['posts']:,} posts.",
    ]
    if e2e.get("soak"):
        soak = e2e["soak"]
        lines += ["", f"### Worker RSS over {soak['posts']:,} posts (cheap bundle)", ""]
        lines += ["| posts | RSS MiB |", "|---:|---:|"]
        lines += [f"| {posts:,} | {mib:.0f} |" for posts, mib in soak["rss_mib"]]
    p = r["poison"]
    lines += [
        "",
        "### Poison",
        "",
        f"{p['good']} good posts: {p['clean_per_s']:.0f}/s alone, "
        f"{p['mixed_per_s']:.0f}/s with {p['bad']} bad ones mixed in.",
    ]
    lines += ["", "### Targets", "", "| target | goal | measured | met |", "|---|---:|---:|---|"]
    for t in r["targets"]:
        value = "n/a" if t["measured"] is None else f"{t['measured']:.2f}"
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['goal']:g} | {value} | {met} |")
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    """Four panels: model-only rate by batch, posts/s by consumer, latency, RSS over the soak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    model = r["model_only"]
    axes[0][0].plot([m["batch"] for m in model], [m["pairs_per_s"] for m in model], "o-")
    axes[0][0].set(xscale="log", xlabel="batch", ylabel="pairs/s", title="Starter model alone")
    e2e = r["end_to_end"]
    labels, rates = [], []
    for name in ("cheap", "starter"):
        for who in ("worker", "naive"):
            labels.append(f"{name}\n{who}")
            rates.append(e2e[name][who]["posts_per_s"])
    axes[0][1].bar(labels, rates, color=["tab:blue", "tab:gray"] * 2)
    axes[0][1].set(ylabel="posts/s", title="End to end, photo posts")
    width = 0.35
    for i, name in enumerate(("cheap", "starter")):
        lat = e2e[name]["paced"]["latency_ms"]
        xs = [j + i * width for j in range(3)]
        axes[1][0].bar(xs, [lat["p50"], lat["p95"], lat["p99"]], width, label=name)
    axes[1][0].set_xticks([j + width / 2 for j in range(3)], ["p50", "p95", "p99"])
    load = float(r["args"]["load"])
    axes[1][0].set(ylabel="ms, event time to durable row", title=f"Latency at {load:.0%} load")
    axes[1][0].legend()
    if e2e.get("soak"):
        points = e2e["soak"]["rss_mib"]
        axes[1][1].plot([p for p, _ in points], [m for _, m in points], "o-")
        axes[1][1].set(xlabel="posts", ylabel="RSS MiB", title="Worker memory, cheap bundle")
        axes[1][1].set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
