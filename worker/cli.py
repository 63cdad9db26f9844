"""The `itmguard` command: parses flags, loads settings, calls one function.

The worker's own commands live here. The review queue's, the model
comparison's, the demo's and the export step's commands live beside the code
they drive and are imported only when one of them is called (or listed in
`--help`), so `itmguard worker` never loads torch, matplotlib, the web app or
the demo's services.
"""

from __future__ import annotations

import base64
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click

from worker.errors import ConfigError, ItmguardError
from worker.options import DB_ENVS, SCORE_ENVS, WORKER_ENVS, load_settings, settings_options
from worker.verdicts import Record

__all__ = ["main"]

_LAZY = {
    "calibrate": ("export.commands", "calibrate"),
    "compare": ("worker.compare.commands", "compare"),
    "demo": ("worker.demo.commands", "demo"),
    "export": ("export.commands", "export"),
    "review": ("worker.review.commands", "review"),
}
"""Commands defined elsewhere: name → (module, attribute)."""


class _Group(click.Group):
    """Loads the commands of `_LAZY` on first use, and turns itmguard's own errors, and a
    missing optional dependency, into one line on stderr and a non-zero exit."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _LAZY:
            return super().get_command(ctx, cmd_name)
        module, attribute = _LAZY[cmd_name]
        try:
            command: click.Command = getattr(importlib.import_module(module), attribute)
        except ImportError as exc:
            return _missing(cmd_name, exc)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.UsageError(f"bad setting {exc}") from exc
        except (ItmguardError, ImportError) as exc:
            raise click.ClickException(str(exc)) from exc


def _missing(name: str, exc: ImportError) -> click.Command:
    """A stand-in for a command whose module cannot be imported here: it says why."""

    def fail(**_: Any) -> None:
        raise click.ClickException(f"`itmguard {name}` cannot load: {exc}")

    return click.Command(
        name,
        callback=fail,
        help=f"(unavailable here: {exc})",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


@click.group(cls=_Group)
@click.version_option(package_name="itmguard")
def main() -> None:
    """itmguard: flag posts whose image and caption do not match."""


@main.command()
@settings_options(WORKER_ENVS)
def worker(**flags: str | None) -> None:
    """Consume post events, score them, write verdicts and publish flags."""
    from worker.runtime import run_worker

    run_worker(load_settings(flags))


@main.command()
@settings_options(SCORE_ENVS)
@click.option(
    "--input",
    "input_file",
    type=click.File("rb"),
    default=None,
    help="post events, one JSON document per line ('-' for stdin)",
)
@click.argument(
    "image", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.argument("caption", required=False)
def score(
    input_file: BinaryIO | None, image: Path | None, caption: str | None, **flags: str | None
) -> None:
    """Score IMAGE against CAPTION, or every post event in --input; one verdict JSON per line."""
    from worker.fetch import ImageFetcher
    from worker.judge import judge_batches
    from worker.messages import encode, verdict_message
    from worker.runtime import open_scorer

    if (input_file is None) == (image is None) or (image is not None and caption is None):
        raise click.UsageError("give either IMAGE and CAPTION, or --input FILE")
    settings = load_settings(flags)
    scorer = open_scorer(settings)
    if image is not None:
        payload = {
            "post_id": image.name,
            "caption": caption,
            "image": {"data": base64.b64encode(image.read_bytes()).decode("ascii")},
        }
        batches: Iterator[list[Record]] = iter(
            [[Record(json.dumps(payload).encode(), topic=str(image))]]
        )
    else:
        assert input_file is not None
        batches = _batches(input_file, settings.max_batch)
    limits = settings.fetch_limits
    for outcomes in judge_batches(batches, scorer, ImageFetcher(limits), limits):
        for outcome in outcomes:
            if outcome.verdict is not None:
                message = verdict_message(outcome.verdict, outcome.explanation)
                click.echo(encode(message).decode("utf-8"))
            else:
                assert outcome.dead_letter is not None
                click.echo(
                    f"line {outcome.record.offset}: {outcome.dead_letter['reason']} "
                    "(no usable post_id)",
                    err=True,
                )


def _batches(stream: BinaryIO, size: int) -> Iterator[list[Record]]:
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
@settings_options(DB_ENVS)
@click.option("--revision", default="head", show_default=True, help="target revision")
def upgrade(revision: str, **flags: str | None) -> None:
    """Migrate the database to REVISION (the latest by default)."""
    from alembic import command

    from worker.persistence import alembic_config

    settings = load_settings(flags)
    command.upgrade(alembic_config(settings.database_url), revision)
    click.echo(f"database at {revision}", err=True)


if __name__ == "__main__":
    sys.exit(main())
