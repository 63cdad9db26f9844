"""`itmguard demo`: the command that runs the whole pipeline on this machine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from worker.logs import configure_logging

__all__ = ["demo"]


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where the database, model, logs and report live (default /var/tmp/itmguard-demo-UID)",
)
@click.option(
    "--bootstrap", default=None, help="use this Kafka (host:port) instead of starting one"
)
@click.option(
    "--database-url",
    default=None,
    help="use this Postgres (postgresql+psycopg://...) instead of starting one",
)
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="score with this bundle instead of the starter model",
)
@click.option(
    "--timeout",
    default=300.0,
    show_default=True,
    type=click.FloatRange(1),
    help="seconds to wait for every verdict",
)
@click.option(
    "--review",
    is_flag=True,
    help="then keep everything running and serve the review page with a demo moderator "
    "account, until Ctrl-C",
)
@click.option(
    "--review-port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65_535),
    help="port of the review page on 127.0.0.1 (0: any free port)",
)
def demo(
    workdir: Path | None,
    bootstrap: str | None,
    database_url: str | None,
    bundle: Path | None,
    timeout: float,
    review: bool,
    review_port: int,
) -> None:
    """Run the whole pipeline on this machine: broker, database, worker, real photos, a report.

    With --review, the moderators' side follows: the review page over the same posts,
    served until Ctrl-C. Everything started here is stopped again on success, failure,
    Ctrl-C or SIGTERM.
    """
    import time

    from worker.demo.report import Row, format_table, write_report
    from worker.demo.review import serve_review
    from worker.demo.run import (
        DemoOptions,
        default_workdir,
        photo_samples,
        run_demo,
        starter_bundle,
    )

    started = time.monotonic()
    configure_logging("warning")
    options = DemoOptions(
        workdir=workdir or default_workdir(),
        bootstrap=bootstrap,
        database_url=database_url,
        bundle=bundle,
        timeout_s=timeout,
    )

    def show(rows: list[Row]) -> None:
        click.echo(format_table(rows))
        report = write_report(rows, options.workdir / "report.html")
        click.echo(f"report: {report}")
        click.echo(f"done in {time.monotonic() - started:.0f}s")

    def show_and_serve(rows: list[Row], database_url: str) -> None:
        show(rows)
        serve_review(database_url, review_port, click.echo)

    click.echo(f"itmguard demo, working in {options.workdir}")
    try:
        rows = run_demo(
            options, starter_bundle, photo_samples(), then=show_and_serve if review else None
        )
    except KeyboardInterrupt:
        click.echo("interrupted: everything the demo started has been stopped", err=True)
        sys.exit(130)
    if not review:
        show(rows)
