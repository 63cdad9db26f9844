"""`itmguard export …` and `itmguard calibrate`: the command line of the export step.

Loaded by `worker.cli` only when one of these commands is called or listed;
torch, transformers and scikit-learn are imported only when one runs, so
listing them needs nothing beyond the worker's own dependencies.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from worker.options import SCORE_ENVS, load_settings, settings_options

__all__ = ["calibrate", "export"]


_OUT = click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="bundle directory to write"
)
_VERSION = click.option(
    "--version", "version", default="1", show_default=True, help="bundle version"
)
_TOLERANCE = click.option(
    "--tolerance",
    default=1e-4,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="largest PyTorch-vs-ONNX difference in match probability accepted",
)
_SPLIT = click.option(
    "--two-graph/--one-graph",
    "split",
    default=True,
    show_default=True,
    help="also write the model as an image graph and a text graph (image.onnx, text.onnx), "
    "checked by the parity gate, so explanations encode each picture once",
)
"""Options both exports take, worded once."""


@click.group()
def export() -> None:
    """Turn a PyTorch checkpoint into a model bundle (needs itmguard[export])."""


@export.command("blip")
@click.option(
    "--checkpoint",
    required=True,
    help="BlipForImageTextRetrieval checkpoint: a local directory, or a Hugging Face "
    "hub id where the hub can be reached",
)
@_OUT
@click.option("--name", default=None, help="bundle name (default: the checkpoint's name)")
@_VERSION
@click.option(
    "--threshold",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="match probability below which a post is a mismatch",
)
@click.option(
    "--max-text-tokens",
    default=None,
    type=click.IntRange(2, 4096),
    help="caption token limit (default: the checkpoint's)",
)
@_TOLERANCE
@click.option(
    "--optimize/--no-optimize",
    default=True,
    show_default=True,
    help="apply ONNX Runtime transformer fusions (checked by the parity gate)",
)
@click.option(
    "--fp16", is_flag=True, help="fp16 bundle with LayerNorm, Softmax and the ITM head kept in fp32"
)
@click.option(
    "--int8",
    is_flag=True,
    help="for CPUs: int8 weights in the linear layers (dynamic quantisation), the ITM head "
    "and everything else kept in fp32; not with --fp16",
)
@click.option(
    "--max-batch",
    default=32,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="largest batch in the TensorRT shape profile",
)
@_SPLIT
def export_blip(
    checkpoint: str,
    out: Path,
    name: str | None,
    version: str,
    threshold: float,
    max_text_tokens: int | None,
    tolerance: float,
    optimize: bool,
    fp16: bool,
    int8: bool,
    max_batch: int,
    split: bool,
) -> None:
    """Export a BLIP image-text matching checkpoint to an ONNX bundle, checking parity."""
    if fp16 and int8:
        raise click.UsageError(
            "give --fp16 (GPUs) or --int8 (CPUs), not both: a bundle has one precision"
        )
    try:
        from export.blip import export_blip as run_export
    except ImportError as exc:
        raise click.ClickException(
            f"export needs torch and transformers: pip install 'itmguard[export]' ({exc})"
        ) from exc
    spec = run_export(
        checkpoint,
        out,
        name=name,
        version=version,
        threshold=threshold,
        max_text_tokens=max_text_tokens,
        tolerance=tolerance,
        optimize=optimize,
        fp16=fp16,
        int8=int8,
        max_batch=max_batch,
        split=split,
        progress=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps({"bundle": str(out), "model_id": spec.model_id}))


@export.command("starter")
@_OUT
@click.option("--name", default="starter", show_default=True, help="bundle name")
@_VERSION
@_TOLERANCE
@_SPLIT
def export_starter(out: Path, name: str, version: str, tolerance: float, split: bool) -> None:
    """Build the zero-shot starter bundle from weights in installed packages (itmguard[starter])."""
    try:
        from export.starter import export_starter as run_export
    except ImportError as exc:
        raise click.ClickException(
            f"the starter export needs pip install 'itmguard[starter]' ({exc})"
        ) from exc
    spec = run_export(
        out,
        name=name,
        version=version,
        tolerance=tolerance,
        split=split,
        progress=lambda m: click.echo(m, err=True),
    )
    click.echo(
        json.dumps(
            {
                "bundle": str(out),
                "model_id": spec.model_id,
                "evaluation": spec.raw.get("evaluation", {}),
            }
        )
    )


_NOT_CALIBRATION_ENVS = (
    "ITMGUARD_BUNDLE",
    "ITMGUARD_THRESHOLD",
    "ITMGUARD_CPU_THREADS",
    "ITMGUARD_CPU_MEMORY_ARENA",
)
"""Scoring settings `calibrate` has no use for: `--bundle` names the bundle, the threshold
is what it picks, and it scores with the scorer's default CPU threads and memory arena."""
_CALIBRATION_ENVS = tuple(env for env in SCORE_ENVS if env not in _NOT_CALIBRATION_ENVS)


@click.command()
@click.option(
    "--bundle",
    "bundle_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="model bundle directory; its bundle.json gets the threshold",
)
@click.option(
    "--labelled",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='post events plus "label" (1 match, 0 mismatch), one JSON per line, '
    "as `itmguard review export-labels` writes them",
)
@click.option(
    "--target-precision",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="the threshold with the most recall whose precision is at least this",
)
@click.option(
    "--target-recall",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="the threshold with the most precision whose recall is at least this",
)
@settings_options(_CALIBRATION_ENVS)
def calibrate(
    bundle_dir: Path,
    labelled: Path,
    target_precision: float | None,
    target_recall: float | None,
    **flags: str | None,
) -> None:
    """Pick the bundle's threshold from labelled posts (needs itmguard[export]).

    Mismatch is the positive class: a post is flagged when its match
    probability is below the threshold; precision is the share of flagged
    posts that are mismatches, recall the share of mismatches flagged.
    Without a target, the threshold with the best F1. Writes the threshold
    and the figures (n, precision, recall, F1, ROC AUC) into bundle.json, and
    pr_curve.png and score_histogram.png beside it; prints a JSON summary.
    Needs at least 20 matching and 20 mismatching posts; unusable lines are
    skipped and reported.
    """
    if target_precision is not None and target_recall is not None:
        raise click.UsageError("give --target-precision or --target-recall, not both")
    try:
        from export.calibrate import calibrate_bundle
    except ImportError as exc:
        raise click.ClickException(
            f"calibrate needs scikit-learn and matplotlib: pip install 'itmguard[export]' ({exc})"
        ) from exc
    settings = load_settings(flags)
    result = calibrate_bundle(
        bundle_dir,
        labelled,
        target_precision=target_precision,
        target_recall=target_recall,
        providers=settings.providers,
        trt_cache_dir=settings.trt_cache_dir,
        limits=settings.fetch_limits,
        batch_size=settings.max_batch,
        progress=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps({"bundle": str(bundle_dir), **asdict(result)}))
