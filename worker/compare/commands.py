"""`itmguard compare --model A --model B --out DIR`: two models' verdicts on the same posts.

Loaded by `worker.cli` only when called or listed. It reads the verdicts and
decisions, writes the report directory (`report.html`, `summary.json`, the
plots) and prints the headline figures.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from worker.compare.since import SINCE
from worker.options import DB_ENVS, load_settings, settings_options

__all__ = ["compare"]


@click.command()
@settings_options(DB_ENVS)
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    metavar="ID",
    help="a model id (name@version), given twice: first A (usually the one in service), then B",
)
@click.option(
    "--since",
    type=SINCE,
    default=None,
    help="only posts both models scored at or after this ISO 8601 time (no offset: UTC)",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="report directory: report.html, summary.json and the plots are written into it",
)
@click.option(
    "--top",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="how many of the largest disagreements the report shows",
)
def compare(
    models: tuple[str, ...], since: datetime | None, out: Path, top: int, **flags: str | None
) -> None:
    """Compare two models' verdicts on the posts both scored, and against moderators' decisions.

    Prints agreement, flag rates and precision; the report directory holds the
    confusion table, the score scatter and histograms, and the largest
    disagreements with their captions and pictures.
    """
    if len(models) != 2 or models[0] == models[1]:
        raise click.UsageError("give --model twice, with two different model ids")
    model_a, model_b = models
    settings = load_settings(flags)
    try:
        from worker.compare import plots
    except ImportError as exc:
        raise click.ClickException(
            f"`itmguard compare` draws its plots with matplotlib, which the `export` extra "
            f"installs ({exc})"
        ) from exc
    from worker.compare.queries import load_pairs, load_pictures
    from worker.compare.report import percent, shown, write_report
    from worker.compare.summary import compare_pairs
    from worker.persistence import check_schema_current, create_engine

    engine = create_engine(settings.database_url)
    try:
        check_schema_current(engine)
        pairs = load_pairs(engine, model_a, model_b, since=since)
        comparison = compare_pairs(pairs, model_a, model_b, since=since, top=top)
        pictures = load_pictures(engine, [p.post_id for p in comparison.top])
    finally:
        engine.dispose()
    if not pairs:
        when = "" if since is None else f" since {since.isoformat()}"
        raise click.ClickException(f"no post has verdicts of both {model_a} and {model_b}{when}")
    out.mkdir(parents=True, exist_ok=True)
    plots.plot_scatter(pairs, comparison, out / plots.SCATTER)
    plots.plot_histograms(pairs, comparison, out / plots.SCORE_HISTOGRAMS)
    report = write_report(
        comparison,
        shown(comparison.top, pictures),
        out,
        plots={"scatter": plots.SCATTER, "histograms": plots.SCORE_HISTOGRAMS},
        generated_at=datetime.now(UTC),
    )
    click.echo(
        f"{comparison.posts} posts scored by both; verdicts agree on {comparison.agreed} "
        f"({percent(comparison.agreement_rate)})"
    )
    for role, figures in (("A", comparison.a), ("B", comparison.b)):
        click.echo(
            f"{role} {figures.model_id}: flag rate {percent(figures.flag_rate)}, precision "
            f"{percent(figures.precision)} on {figures.decided_flagged} decided flags, "
            f"confirmed mismatches missed {len(figures.confirmed_missed)}"
        )
    click.echo(f"report: {report}")
