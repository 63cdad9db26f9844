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

_REVIEW_ONLY = ("ITMGUARD_MODERATOR", "ITMGUARD_REVIEW_")
_WORKER = tuple(spec.env for spec in SETTINGS if not spec.env.startswith(_REVIEW_ONLY))
_SCORE = (
    "ITMGUARD_BUNDLE",
    "ITMGUARD_THRESHOLD",
    "ITMGUARD_PROVIDERS",
    "ITMGUARD_TRT_CACHE_DIR",
    "ITMGUARD_CPU_THREADS",
    "ITMGUARD_CPU_MEMORY_ARENA",
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


@export.command("starter")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="bundle directory to write")
@click.option("--name", default="starter", show_default=True, help="bundle name")
@click.option("--version", "version", default="1", show_default=True, help="bundle version")
@click.option("--tolerance", default=1e-4, show_default=True, type=click.FloatRange(0, 1),
              help="largest PyTorch-vs-ONNX difference in match probability accepted")
def export_starter(out: Path, name: str, version: str, tolerance: float) -> None:
    """Build the zero-shot starter bundle from weights in installed packages (itmguard[starter])."""
    try:
        from export.starter import export_starter as run_export
    except ImportError as exc:
        raise click.ClickException(
            f"the starter export needs pip install 'itmguard[starter]' ({exc})"
        ) from exc
    spec = run_export(out, name=name, version=version, tolerance=tolerance,
                      progress=lambda m: click.echo(m, err=True))
    click.echo(json.dumps({"bundle": str(out), "model_id": spec.model_id,
                           "evaluation": spec.raw.get("evaluation", {})}))


_CALIBRATE = tuple(env for env in _SCORE if env not in (
    "ITMGUARD_BUNDLE", "ITMGUARD_THRESHOLD", "ITMGUARD_CPU_THREADS", "ITMGUARD_CPU_MEMORY_ARENA"
))


@main.command()
@click.option("--bundle", "bundle_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="model bundle directory; its bundle.json gets the threshold")
@click.option("--labelled", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="post events plus \"label\" (1 match, 0 mismatch), one JSON per line, "
                   "as `itmguard review export-labels` writes them")
@click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="the threshold with the most recall whose precision is at least this")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="the threshold with the most precision whose recall is at least this")
@settings_options(_CALIBRATE)
def calibrate(bundle_dir: Path, labelled: Path, target_precision: float | None,
              target_recall: float | None, **flags: str | None) -> None:
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
    import dataclasses

    if target_precision is not None and target_recall is not None:
        raise click.UsageError("give --target-precision or --target-recall, not both")
    try:
        from export.calibrate import calibrate_bundle
    except ImportError as exc:
        raise click.ClickException(
            f"calibrate needs scikit-learn and matplotlib: pip install 'itmguard[export]' ({exc})"
        ) from exc
    settings = _settings(flags)
    result = calibrate_bundle(
        bundle_dir, labelled, target_precision=target_precision, target_recall=target_recall,
        providers=settings.providers, trt_cache_dir=settings.trt_cache_dir,
        limits=settings.fetch_limits, batch_size=settings.max_batch,
        progress=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps({"bundle": str(bundle_dir), **dataclasses.asdict(result)}))


_REVIEW = ("ITMGUARD_DATABASE_URL", "ITMGUARD_LOG_LEVEL", "ITMGUARD_MODERATOR",
           "ITMGUARD_REVIEW_LEASE_S", "ITMGUARD_REVIEW_ORDER")
_REVIEW_SERVE = ("ITMGUARD_DATABASE_URL", "ITMGUARD_LOG_LEVEL", "ITMGUARD_REVIEW_LEASE_S",
                 "ITMGUARD_REVIEW_ORDER", "ITMGUARD_REVIEW_HOST", "ITMGUARD_REVIEW_PORT",
                 "ITMGUARD_REVIEW_SECRET")
_JSON = click.option("--json", "as_json", is_flag=True, help="one JSON document instead of text")


@main.group()
def review() -> None:
    """The moderators' review queue: claim, decide, audit; acts as ITMGUARD_MODERATOR."""


def _review_engine(flags: dict[str, str | None], *, moderator: bool = True) -> tuple[Any, Any, str]:
    settings = _settings(flags)
    from worker.persistence import check_schema_current, create_engine
    from worker.review import require_moderator

    engine = create_engine(settings.database_url)
    check_schema_current(engine)
    name = ""
    if moderator:
        if settings.moderator is None:
            raise ConfigError("ITMGUARD_MODERATOR", "",
                              "set it (or --moderator) to the moderator account you act as")
        name = require_moderator(engine, settings.moderator).username
    return settings, engine, name


def _terminal(text: str) -> str:
    """User text made safe for a terminal: control characters shown as escapes, not obeyed."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _when(value: Any) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _item_json(item: Any) -> dict[str, Any]:
    import dataclasses

    return {k: v.isoformat() if hasattr(v, "isoformat") else v
            for k, v in dataclasses.asdict(item).items()}


def _echo_item(item: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_item_json(item)))
        return
    if item.image_url:
        image = _terminal(item.image_url)
    elif item.has_thumbnail:
        image = f"inline (thumbnail: itmguard review thumbnail {item.id} FILE)"
    else:
        image = "none"
    lines = [
        f"item {item.id}  post {_terminal(item.post_id)}  model {_terminal(item.model_id)}",
        f"score {item.score:.3f}  threshold {item.threshold:.3f}",
        f"posted {_when(item.event_time)}  queued {_when(item.created_at)}",
        f"image {image}",
        f"caption {_terminal(item.caption)}",
    ]
    if item.status == "claimed":
        lines.append(f"claimed by {item.claimed_by} until {_when(item.lease_expires_at)}")
    elif item.status == "decided":
        lines.append(f"decided {item.decision} by {item.decided_by} at {_when(item.decided_at)}")
        if item.note:
            lines.append(f"note {_terminal(item.note)}")
    else:
        lines.append("pending")
    click.echo("\n".join(lines))


@review.command("next")
@settings_options(_REVIEW)
@_JSON
def review_next(as_json: bool, **flags: str | None) -> None:
    """Claim the next item (or show the one you hold) and print it; exit 2 when none is pending."""
    from worker.review import claim_next

    settings, engine, name = _review_engine(flags)
    item = claim_next(engine, name, lease_s=settings.review_lease_s, order=settings.review_order)
    if item is None:
        click.echo("the queue is empty", err=True)
        sys.exit(2)
    _echo_item(item, as_json)


@review.command("claim")
@settings_options(_REVIEW)
@_JSON
@click.argument("item_id", type=int, required=False)
def review_claim(item_id: int | None, as_json: bool, **flags: str | None) -> None:
    """Claim item ITEM_ID (or renew your lease on it); without ITEM_ID, the same as `next`."""
    from worker.review import claim, claim_next

    settings, engine, name = _review_engine(flags)
    if item_id is None:
        item = claim_next(engine, name, lease_s=settings.review_lease_s,
                          order=settings.review_order)
        if item is None:
            click.echo("the queue is empty", err=True)
            sys.exit(2)
    else:
        item = claim(engine, item_id, name, lease_s=settings.review_lease_s)
    _echo_item(item, as_json)


@review.command("decide")
@settings_options(_REVIEW)
@click.option("--note", default=None,
              help="free text kept with the decision (at most 2,000 characters)")
@click.argument("item_id", type=int)
@click.argument("decision", type=click.Choice(["confirmed_mismatch", "not_a_mismatch", "escalate"]))
def review_decide(item_id: int, decision: str, note: str | None, **flags: str | None) -> None:
    """Decide item ITEM_ID, which you must hold: confirmed_mismatch, not_a_mismatch or escalate."""
    from worker.review import decide

    _, engine, name = _review_engine(flags)
    item = decide(engine, item_id, name, decision, note)
    click.echo(f"item {item.id}: {item.decision} by {item.decided_by}")


@review.command("release")
@settings_options(_REVIEW)
@click.argument("item_id", type=int, required=False)
def review_release(item_id: int | None, **flags: str | None) -> None:
    """Give item ITEM_ID back to the queue undecided; without ITEM_ID, every item you hold."""
    from worker.review import release, release_all

    _, engine, name = _review_engine(flags)
    if item_id is not None:
        release(engine, item_id, name)
        click.echo(f"item {item_id} released")
    else:
        ids = release_all(engine, name)
        click.echo(f"released {len(ids)} item(s){': ' if ids else ''}{', '.join(map(str, ids))}")


@review.command("stats")
@settings_options(_DB)
@_JSON
def review_stats(as_json: bool, **flags: str | None) -> None:
    """Pending, claimed and decided items (by decision), and the oldest pending item's age."""
    from worker.review import stats

    _, engine, _ = _review_engine(flags, moderator=False)
    got = stats(engine)
    if as_json:
        click.echo(json.dumps(got.to_dict()))
        return
    age = "-" if got.oldest_pending_age_s is None else f"{got.oldest_pending_age_s:.0f} s"
    click.echo(f"pending {got.pending} (of which {got.expired_leases} with a lapsed lease)\n"
               f"claimed {got.claimed}")
    for decision, count in got.decided.items():
        click.echo(f"{decision} {count}")
    click.echo(f"oldest pending {age}")


@review.command("history")
@settings_options(_DB)
@_JSON
@click.argument("item_id", type=int)
def review_history(item_id: int, as_json: bool, **flags: str | None) -> None:
    """The audit trail of item ITEM_ID: every claim, renewal, release, expiry and decision."""
    from worker.review import history

    _, engine, _ = _review_engine(flags, moderator=False)
    for entry in history(engine, item_id):
        if as_json:
            click.echo(json.dumps(_item_json(entry)))
        else:
            extra = f" {entry.decision}" if entry.decision else ""
            note = f" note: {_terminal(entry.note)}" if entry.note else ""
            click.echo(f"{_when(entry.at)} {entry.action} {entry.moderator}{extra}{note}")


@review.command("thumbnail")
@settings_options(_DB)
@click.argument("item_id", type=int)
@click.argument("out", type=click.File("wb"))
def review_thumbnail(item_id: int, out: Any, **flags: str | None) -> None:
    """Write the stored JPEG thumbnail of item ITEM_ID (inline images only) to OUT."""
    from worker.review import get_item, thumbnail

    _, engine, _ = _review_engine(flags, moderator=False)
    data = thumbnail(engine, item_id)
    if data is None:
        get_item(engine, item_id)  # ItemNotFound when there is no such item
        raise click.ClickException(f"item {item_id} has no stored thumbnail (its image is a URL)")
    out.write(data)


@review.command("export-labels")
@settings_options(_DB)
@click.option("--out", type=click.File("w", encoding="utf-8"), default="-", show_default=True,
              help="file to write, '-' for stdout")
@click.option("--model-id", default=None, help="only items flagged by this model (name@version)")
def review_export_labels(out: Any, model_id: str | None, **flags: str | None) -> None:
    """Write moderators' decisions as labelled data for `itmguard calibrate --labelled FILE`.

    One JSON line per decided post: the post event plus "label" (0 for
    confirmed_mismatch, 1 for not_a_mismatch); escalated items are left out.
    The image is the original URL, or for inline images the stored thumbnail
    (small: at most 256 px on its longer side) as base64 "data", so scores on
    those lines come from a smaller image than the worker saw.
    """
    from worker.review import export_labels

    _, engine, _ = _review_engine(flags, moderator=False)
    counts = export_labels(engine, out, model_id=model_id)
    click.echo(
        f"wrote {counts.written} labelled posts; left out {counts.escalated} escalated, "
        f"{counts.superseded} older decisions on the same post ({counts.conflicts} disagreeing), "
        f"{counts.unusable} without caption or image", err=True,
    )


def _new_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("password", hide_input=True, confirmation_prompt=True))


@review.command("add-moderator")
@settings_options(_DB)
@click.option("--password-stdin", is_flag=True, help="read the password from stdin's first line")
@click.argument("username")
def review_add_moderator(username: str, password_stdin: bool, **flags: str | None) -> None:
    """Create moderator account USERNAME (admin); the password is stored as an Argon2id hash."""
    from worker.review import add_moderator

    _, engine, _ = _review_engine(flags, moderator=False)
    add_moderator(engine, username, _new_password(password_stdin))
    click.echo(f"moderator {username} created", err=True)


@review.command("set-password")
@settings_options(_DB)
@click.option("--password-stdin", is_flag=True, help="read the password from stdin's first line")
@click.argument("username")
def review_set_password(username: str, password_stdin: bool, **flags: str | None) -> None:
    """Replace USERNAME's password (admin); their web sessions end."""
    from worker.review import set_password

    _, engine, _ = _review_engine(flags, moderator=False)
    set_password(engine, username, _new_password(password_stdin))
    click.echo(f"password of {username} replaced", err=True)


@review.command("disable-moderator")
@settings_options(_DB)
@click.option("--enable", is_flag=True, help="re-enable the account instead")
@click.argument("username")
def review_disable_moderator(username: str, enable: bool, **flags: str | None) -> None:
    """Disable USERNAME (admin): sessions end, held items go back to the queue."""
    from worker.review import disable_moderator

    _, engine, _ = _review_engine(flags, moderator=False)
    released = disable_moderator(engine, username, disabled=not enable)
    state = "enabled" if enable else f"disabled, {len(released)} held item(s) released"
    click.echo(f"moderator {username} {state}", err=True)


@review.command("serve")
@settings_options(_REVIEW_SERVE)
@click.option("--dev", is_flag=True,
              help="plain http on this machine: no ITMGUARD_REVIEW_SECRET needed (a random one, "
                   "sessions end on restart) and cookies not marked Secure")
def review_serve(dev: bool, **flags: str | None) -> None:
    """Serve the review web page (sign-in, queue, item, list, history) until SIGTERM."""
    settings = _settings(flags)
    from worker.web import serve

    serve(settings, dev=dev)


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the database, model, logs and report live (default /var/tmp/itmguard-demo-UID)")
@click.option("--bootstrap", default=None, help="use this Kafka (host:port) instead of starting one")
@click.option("--database-url", default=None,
              help="use this Postgres (postgresql+psycopg://...) instead of starting one")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="score with this bundle instead of the starter model")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(1),
              help="seconds to wait for every verdict")
def demo(workdir: Path | None, bootstrap: str | None, database_url: str | None,
         bundle: Path | None, timeout: float) -> None:
    """Run the whole pipeline on this machine: broker, database, worker, real photos, a report.

    Everything started here is stopped again on success, failure, Ctrl-C or SIGTERM.
    """
    import time

    from worker.demo import (
        DemoOptions,
        default_workdir,
        format_table,
        photo_samples,
        run_demo,
        starter_bundle,
        write_report,
    )

    started = time.monotonic()
    configure_logging("warning")
    options = DemoOptions(workdir=workdir or default_workdir(), bootstrap=bootstrap,
                          database_url=database_url, bundle=bundle, timeout_s=timeout)
    click.echo(f"itmguard demo, working in {options.workdir}")
    try:
        rows = run_demo(options, starter_bundle, photo_samples())
    except KeyboardInterrupt:
        click.echo("interrupted: everything the demo started has been stopped", err=True)
        sys.exit(130)
    click.echo(format_table(rows))
    report = write_report(rows, options.workdir / "report.html")
    click.echo(f"report: {report}")
    click.echo(f"done in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
