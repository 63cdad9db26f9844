"""The `itmguard` command: parses flags, loads settings, calls one function."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from worker.config import SETTINGS, Settings
from worker.errors import ConfigError, ItmguardError
from worker.logs import configure_logging

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

_WORKER = tuple(spec.env for spec in SETTINGS)
_SCORE = (
    "ITMGUARD_BUNDLE",
    "ITMGUARD_THRESHOLD",
    "ITMGUARD_PROVIDERS",
    "ITMGUARD_TRT_CACHE_DIR",
    "ITMGUARD_MAX_BATCH",
    "ITMGUARD_IMAGE_MAX_BYTES",
    "ITMGUARD_IMAGE_MAX_PIXELS",
    "ITMGUARD_IMAGE_ALLOW_HOSTS",
    "ITMGUARD_IMAGE_ALLOW_HTTP",
    "ITMGUARD_IMAGE_TIMEOUT_S",
    "ITMGUARD_IMAGE_CONNECT_TIMEOUT_S",
    "ITMGUARD_IMAGE_MAX_REDIRECTS",
    "ITMGUARD_IMAGE_RETRIES",
    "ITMGUARD_LOG_LEVEL",
)
_DB = ("ITMGUARD_DATABASE_URL", "ITMGUARD_LOG_LEVEL")


def settings_options(envs: tuple[str, ...]) -> Callable[[F], F]:
    """Add one flag per setting in `envs`, documented from the setting itself."""

    def decorate(func: F) -> F:
        for spec in reversed([s for s in SETTINGS if s.env in envs]):
            func = click.option(
                spec.flag, spec.env, default=None, metavar="VALUE",
                help=f"{spec.help} [env {spec.env}]",
            )(func)
        return func

    return decorate


def _settings(flags: dict[str, str | None]) -> Settings:
    settings = Settings.from_env(os.environ, flags)
    configure_logging(settings.log_level)
    return settings


class _Group(click.Group):
    """Turns itmguard's own errors, and a missing optional dependency, into one line on
    stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.UsageError(f"bad setting {exc}") from exc
        except (ItmguardError, ImportError) as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(package_name="itmguard")
def main() -> None:
    """itmguard: flag posts whose image and caption do not match."""


@main.command()
@settings_options(_WORKER)
def worker(**flags: str | None) -> None:
    """Consume post events, score them, write verdicts and publish flags."""
    from worker.runtime import run_worker

    run_worker(_settings(flags))


@main.command()
@settings_options(_SCORE)
@click.option("--input", "input_file", type=click.File("rb"), default=None,
              help="post events, one JSON document per line ('-' for stdin)")
@click.argument("image", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("caption", required=False)
def score(input_file: Any, image: Path | None, caption: str | None, **flags: str | None) -> None:
    """Score IMAGE against CAPTION, or every post event in --input; one verdict JSON per line."""
    from worker.batch import Record, image_urls, parse_records, score_parsed
    from worker.fetch import fetch_urls
    from worker.runtime import open_scorer

    if (input_file is None) == (image is None) or (image is not None and caption is None):
        raise click.UsageError("give either IMAGE and CAPTION, or --input FILE")
    settings = _settings(flags)
    scorer = open_scorer(settings)
    if image is not None:
        payload = {
            "post_id": image.name,
            "caption": caption,
            "image": {"data": base64.b64encode(image.read_bytes()).decode("ascii")},
        }
        records = iter([[Record(json.dumps(payload).encode(), topic=str(image))]])
    else:
        records = _batches(input_file, settings.max_batch)
    for batch in records:
        parsed = parse_records(batch)
        fetched = fetch_urls(settings.fetch_limits, image_urls(parsed))
        for outcome in score_parsed(parsed, scorer, settings.fetch_limits, fetched=fetched):
            if outcome.verdict is not None:
                click.echo(json.dumps(outcome.verdict.to_message()))
            else:
                assert outcome.dead_letter is not None
                click.echo(
                    f"line {outcome.record.offset}: {outcome.dead_letter['reason']} "
                    f"(no usable post_id)", err=True,
                )


def _batches(stream: Any, size: int) -> Iterator[list[Any]]:
    from worker.batch import Record

    name = getattr(stream, "name", "-")
    batch: list[Record] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        batch.append(Record(line.rstrip(b"\r\n"), topic=name, offset=number))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
@settings_options(_DB)
@click.option("--revision", default="head", show_default=True, help="target revision")
def upgrade(revision: str, **flags: str | None) -> None:
    """Migrate the database to REVISION (the latest by default)."""
    from alembic import command

    from worker.persistence import alembic_config

    settings = _settings(flags)
    command.upgrade(alembic_config(settings.database_url), revision)
    click.echo(f"database at {revision}", err=True)


@main.group()
def export() -> None:
    """Turn a PyTorch checkpoint into a model bundle (needs itmguard[export])."""


@export.command("blip")
@click.option("--checkpoint", required=True,
              help="BlipForImageTextRetrieval checkpoint: a local directory, or a Hugging Face "
                   "hub id where the hub can be reached")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="bundle directory to write")
@click.option("--name", default=None, help="bundle name (default: the checkpoint's name)")
@click.option("--version", "version", default="1", show_default=True, help="bundle version")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="match probability below which a post is a mismatch")
@click.option("--max-text-tokens", default=None, type=click.IntRange(2, 4096),
              help="caption token limit (default: the checkpoint's)")
@click.option("--tolerance", default=1e-4, show_default=True, type=click.FloatRange(0, 1),
              help="largest PyTorch-vs-ONNX difference in match probability accepted")
@click.option("--optimize/--no-optimize", default=True, show_default=True,
              help="apply ONNX Runtime transformer fusions (checked by the parity gate)")
@click.option("--fp16", is_flag=True,
              help="fp16 bundle with LayerNorm, Softmax and the ITM head kept in fp32")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1, 1024),
              help="largest batch in the TensorRT shape profile")
def export_blip(checkpoint: str, out: Path, name: str | None, version: str, threshold: float,
                max_text_tokens: int | None, tolerance: float, optimize: bool, fp16: bool,
                max_batch: int) -> None:
    """Export a BLIP image-text matching checkpoint to an ONNX bundle, checking parity."""
    try:
        from export.blip import export_blip as run_export
    except ImportError as exc:
        raise click.ClickException(
            f"export needs torch and transformers: pip install 'itmguard[export]' ({exc})"
        ) from exc
    spec = run_export(checkpoint, out, name=name, version=version, threshold=threshold,
                      max_text_tokens=max_text_tokens, tolerance=tolerance, optimize=optimize,
                      fp16=fp16, max_batch=max_batch, progress=lambda m: click.echo(m, err=True))
    click.echo(json.dumps({"bundle": str(out), "model_id": spec.model_id}))


if __name__ == "__main__":
    sys.exit(main())
