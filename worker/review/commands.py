"""`itmguard review …`: the moderators' queue and the admin's accounts from a terminal.

Loaded by `worker.cli` only when a review command is called or listed. Every
command acts through `worker.review`'s functions, as the web page does, so
both keep the same rules and the same audit trail; the audit records each
step as coming from the CLI, with the operating-system user who ran it.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click

from worker.compare.since import SINCE
from worker.errors import ConfigError
from worker.options import DB_ENVS, load_settings, settings_options
from worker.review.display import score_text
from worker.review.origin import cli_origin

__all__ = ["review"]

_WORKFLOW = (
    "ITMGUARD_REVIEW_REASONS",
    "ITMGUARD_REVIEW_REQUIRE_REASON",
    "ITMGUARD_REVIEW_UNDO_S",
    "ITMGUARD_REVIEW_SECOND_OPINION_SHARE",
)
_REVIEW = (
    "ITMGUARD_DATABASE_URL",
    "ITMGUARD_LOG_LEVEL",
    "ITMGUARD_MODERATOR",
    "ITMGUARD_REVIEW_LEASE_S",
    "ITMGUARD_REVIEW_ORDER",
    *_WORKFLOW,
)
_REVIEW_SERVE = (
    "ITMGUARD_DATABASE_URL",
    "ITMGUARD_LOG_LEVEL",
    "ITMGUARD_REVIEW_LEASE_S",
    "ITMGUARD_REVIEW_ORDER",
    *_WORKFLOW,
    "ITMGUARD_REVIEW_HOST",
    "ITMGUARD_REVIEW_PORT",
    "ITMGUARD_REVIEW_SECRET_FILE",
    "ITMGUARD_REVIEW_IDLE_S",
    "ITMGUARD_REVIEW_TRUSTED_PROXIES",
)
_JSON = click.option("--json", "as_json", is_flag=True, help="one JSON document instead of text")


@click.group()
def review() -> None:
    """The moderators' review queue: claim, decide, audit; acts as ITMGUARD_MODERATOR."""


def _review_engine(flags: dict[str, str | None], *, moderator: bool = True) -> tuple[Any, Any, str]:
    settings = load_settings(flags)
    from worker.persistence import check_schema_current, create_engine
    from worker.review.accounts import require_moderator

    engine = create_engine(settings.database_url)
    check_schema_current(engine)
    name = ""
    if moderator:
        if settings.moderator is None:
            raise ConfigError(
                "ITMGUARD_MODERATOR",
                "",
                "set it (or --moderator) to the moderator account you act as",
            )
        name = require_moderator(engine, settings.moderator).username
    return settings, engine, name


def _terminal(text: str) -> str:
    """User text made safe for a terminal: control characters shown as escapes, not obeyed."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _when(value: Any) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _item_json(item: Any) -> dict[str, Any]:
    import dataclasses

    return {
        k: v.isoformat() if hasattr(v, "isoformat") else v
        for k, v in dataclasses.asdict(item).items()
    }


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
        f"score {score_text(item.score)}  threshold {score_text(item.threshold)}",
        f"posted {_when(item.event_time)}  queued {_when(item.created_at)}",
        f"image {image}",
        f"caption {_terminal(item.caption)}",
    ]
    culprits = (item.explanation or {}).get("culprits", [])
    if culprits:
        lines.append(
            "contradicted "
            + ", ".join(f'"{_terminal(c["text"])}" (+{score_text(c["delta"])})' for c in culprits)
        )
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
    from worker.review.queue import claim_next

    settings, engine, name = _review_engine(flags)
    item = claim_next(
        engine,
        name,
        lease_s=settings.review_lease_s,
        order=settings.review_order,
        origin=cli_origin(),
    )
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
    from worker.review.queue import claim, claim_next

    settings, engine, name = _review_engine(flags)
    if item_id is None:
        item = claim_next(
            engine,
            name,
            lease_s=settings.review_lease_s,
            order=settings.review_order,
            origin=cli_origin(),
        )
        if item is None:
            click.echo("the queue is empty", err=True)
            sys.exit(2)
    else:
        item = claim(engine, item_id, name, lease_s=settings.review_lease_s, origin=cli_origin())
    _echo_item(item, as_json)


@review.command("decide")
@settings_options(_REVIEW)
@click.option(
    "--note", default=None, help="free text kept with the decision (at most 2,000 characters)"
)
@click.option("--reason", default=None, help="policy category of a confirmed mismatch")
@click.argument("item_id", type=int)
@click.argument("decision", type=click.Choice(["confirmed_mismatch", "not_a_mismatch", "escalate"]))
def review_decide(
    item_id: int, decision: str, note: str | None, reason: str | None, **flags: str | None
) -> None:
    """Decide item ITEM_ID, which you must hold: confirmed_mismatch (with --reason, one of
    ITMGUARD_REVIEW_REASONS), not_a_mismatch or escalate."""
    from worker.review.decisions import DecisionPolicy
    from worker.review.queue import decide

    settings, engine, name = _review_engine(flags)
    policy = DecisionPolicy.from_settings(settings)
    item = decide(
        engine, item_id, name, decision, note, reason=reason, policy=policy, origin=cli_origin()
    )
    second = "; sent for a second opinion" if item.status == "pending" else ""
    click.echo(f"item {item.id}: {decision} by {name}{second}")


@review.command("release")
@settings_options(_REVIEW)
@click.argument("item_id", type=int, required=False)
def review_release(item_id: int | None, **flags: str | None) -> None:
    """Give item ITEM_ID back to the queue undecided; without ITEM_ID, every item you hold."""
    from worker.review.queue import release, release_all

    _, engine, name = _review_engine(flags)
    if item_id is not None:
        release(engine, item_id, name, origin=cli_origin())
        click.echo(f"item {item_id} released")
    else:
        ids = release_all(engine, name, origin=cli_origin())
        click.echo(f"released {len(ids)} item(s){': ' if ids else ''}{', '.join(map(str, ids))}")


@review.command("stats")
@settings_options(DB_ENVS)
@_JSON
def review_stats(as_json: bool, **flags: str | None) -> None:
    """Pending, claimed and decided items (by decision), and the oldest pending item's age."""
    from worker.review.figures import figures
    from worker.review.items import stats

    _, engine, _ = _review_engine(flags, moderator=False)
    got, team = stats(engine), figures(engine)
    if as_json:
        click.echo(json.dumps({**got.to_dict(), "figures": team.to_dict()}))
        return
    age = "-" if got.oldest_pending_age_s is None else f"{got.oldest_pending_age_s:.0f} s"
    click.echo(
        f"pending {got.pending} (of which {got.expired_leases} with a lapsed lease)\n"
        f"claimed {got.claimed}"
    )
    for decision, count in got.decided.items():
        click.echo(f"{decision} {count}")
    click.echo(f"oldest pending {age}")
    agreement = "-" if team.agreement is None else f"{team.agreement:.0%}"
    click.echo(f"second opinions {team.second_opinions}, agreeing {agreement}")


@review.command("history")
@settings_options(DB_ENVS)
@_JSON
@click.argument("item_id", type=int)
def review_history(item_id: int, as_json: bool, **flags: str | None) -> None:
    """The audit trail of item ITEM_ID: every claim, renewal, release, expiry and decision."""
    from worker.review.items import history

    _, engine, _ = _review_engine(flags, moderator=False)
    for entry in history(engine, item_id):
        if as_json:
            click.echo(json.dumps(_item_json(entry)))
        else:
            extra = f" {entry.decision}" if entry.decision else ""
            via = f" via {entry.via}" if entry.via else ""
            who = f" ({_terminal(entry.os_user)})" if entry.os_user else ""
            note = f" note: {_terminal(entry.note)}" if entry.note else ""
            click.echo(f"{_when(entry.at)} {entry.action} {entry.moderator}{extra}{via}{who}{note}")


@review.command("thumbnail")
@settings_options(DB_ENVS)
@click.argument("item_id", type=int)
@click.argument("out", type=click.File("wb"))
def review_thumbnail(item_id: int, out: Any, **flags: str | None) -> None:
    """Write the stored JPEG thumbnail of item ITEM_ID (of the picture it was scored on) to OUT."""
    from worker.review.items import get_item, thumbnail

    _, engine, _ = _review_engine(flags, moderator=False)
    data = thumbnail(engine, item_id)
    if data is None:
        get_item(engine, item_id)  # ItemNotFound when there is no such item
        raise click.ClickException(
            f"item {item_id} has no stored thumbnail (queued before URL images were kept)"
        )
    out.write(data)


@review.command("export-labels")
@settings_options(DB_ENVS)
@click.option(
    "--out",
    type=click.File("w", encoding="utf-8"),
    default="-",
    show_default=True,
    help="file to write, '-' for stdout",
)
@click.option(
    "--model",
    "--model-id",
    "model_id",
    default=None,
    metavar="ID",
    help="only items flagged by this model (name@version)",
)
@click.option(
    "--since",
    type=SINCE,
    default=None,
    help="only decisions made at or after this ISO 8601 time (no offset: UTC)",
)
def review_export_labels(
    out: Any, model_id: str | None, since: datetime | None, **flags: str | None
) -> None:
    """Write moderators' decisions as labelled data for `itmguard calibrate --labelled FILE`.

    One JSON line per decided post: the post event plus "label" (0 for
    confirmed_mismatch, 1 for not_a_mismatch); escalated items are left out.
    The image is the original URL, or for inline images the stored thumbnail
    (small: at most 256 px on its longer side) as base64 "data", so scores on
    those lines come from a smaller image than the worker saw.
    """
    from worker.review.labels import export_labels

    _, engine, _ = _review_engine(flags, moderator=False)
    counts = export_labels(engine, out, model_id=model_id, since=since)
    click.echo(
        f"wrote {counts.written} labelled posts; left out {counts.escalated} escalated, "
        f"{counts.superseded} older decisions on the same post ({counts.conflicts} disagreeing), "
        f"{counts.unusable} without caption or image; {counts.second_opinions} second "
        f"opinions, {counts.agreed} agreeing with the first decision",
        err=True,
    )


def _new_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("password", hide_input=True, confirmation_prompt=True))


@review.command("add-moderator")
@settings_options(DB_ENVS)
@click.option("--password-stdin", is_flag=True, help="read the password from stdin's first line")
@click.argument("username")
def review_add_moderator(username: str, password_stdin: bool, **flags: str | None) -> None:
    """Create moderator account USERNAME (admin); the password is stored as an Argon2id hash."""
    from worker.review.accounts import add_moderator

    _, engine, _ = _review_engine(flags, moderator=False)
    add_moderator(engine, username, _new_password(password_stdin))
    click.echo(f"moderator {username} created", err=True)


@review.command("set-password")
@settings_options(DB_ENVS)
@click.option("--password-stdin", is_flag=True, help="read the password from stdin's first line")
@click.argument("username")
def review_set_password(username: str, password_stdin: bool, **flags: str | None) -> None:
    """Replace USERNAME's password (admin); their web sessions end."""
    from worker.review.accounts import set_password

    _, engine, _ = _review_engine(flags, moderator=False)
    set_password(engine, username, _new_password(password_stdin))
    click.echo(f"password of {username} replaced", err=True)


@review.command("disable-moderator")
@settings_options(DB_ENVS)
@click.option("--enable", is_flag=True, help="re-enable the account instead")
@click.argument("username")
def review_disable_moderator(username: str, enable: bool, **flags: str | None) -> None:
    """Disable USERNAME (admin): sessions end, held items go back to the queue."""
    from worker.review.accounts import disable_moderator

    _, engine, _ = _review_engine(flags, moderator=False)
    released = disable_moderator(engine, username, disabled=not enable, origin=cli_origin())
    state = "enabled" if enable else f"disabled, {len(released)} held item(s) released"
    click.echo(f"moderator {username} {state}", err=True)


@review.command("unlock-moderator")
@settings_options(DB_ENVS)
@click.argument("username")
def review_unlock_moderator(username: str, **flags: str | None) -> None:
    """Lift USERNAME's sign-in lockout and backoff after failed sign-ins (admin)."""
    from worker.review.throttle import unlock

    _, engine, _ = _review_engine(flags, moderator=False)
    state = "unlocked" if unlock(engine, username) else "was not locked"
    click.echo(f"moderator {username} {state}", err=True)


@review.command("serve")
@settings_options(_REVIEW_SERVE)
@click.option(
    "--dev",
    is_flag=True,
    help="plain http on this machine: no ITMGUARD_REVIEW_SECRET needed (a random one, "
    "sessions end on restart) and cookies not marked Secure",
)
def review_serve(dev: bool, **flags: str | None) -> None:
    """Serve the review web page (sign-in, queue, item, list, history) until SIGTERM."""
    settings = load_settings(flags)
    from worker.review.web import serve

    serve(settings, dev=dev)
