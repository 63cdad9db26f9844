"""`itmguard review` through click's CliRunner against a real Postgres."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from worker.cli import main

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


def run(
    database_url: str,
    *args: str,
    moderator: str | None = "alice",
    stdin: str | None = None,
    **env: str,
) -> Result:
    """Invoke `itmguard review ARGS` with the test database and moderator in the environment."""
    environ = {"ITMGUARD_DATABASE_URL": database_url, "ITMGUARD_MODERATOR": moderator, **env}
    return CliRunner().invoke(main, ["review", *args], env=environ, input=stdin)


def seed(database_url: str, captions: list[str], *, thumbnail: bytes | None = None) -> list[int]:
    """Pending items with the given captions, the first with the lowest score."""
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        for i, caption in enumerate(captions):
            conn.execute(
                sa.text(
                    "INSERT INTO review_items (post_id, model_id, score, threshold, status, "
                    "created_at, caption, image_url, thumbnail) VALUES (:p, 'm@1', :s, 0.5, "
                    "'pending', now() - make_interval(secs => :age), :c, :url, :thumb)"
                ),
                {
                    "p": f"post-{i}",
                    "s": 0.1 + i / 100,
                    "age": 100 - i,
                    "c": caption,
                    "url": None if thumbnail else f"https://img.example/{i}.jpg",
                    "thumb": thumbnail,
                },
            )
        ids = conn.execute(sa.text("SELECT id FROM review_items ORDER BY id")).scalars().all()
    engine.dispose()
    return list(ids)


@pytest.fixture
def accounts(database_url: str) -> str:
    """Moderator accounts alice and bob, made through the admin command."""
    for name in ("alice", "bob"):
        result = run(
            database_url,
            "add-moderator",
            "--password-stdin",
            name,
            moderator=None,
            stdin=PASSWORD + "\n",
        )
        assert result.exit_code == 0, result.output
    return database_url


def test_add_moderator_prompts_twice_and_refuses_duplicates(database_url: str) -> None:
    """The admin command asks for the password twice, stores a hash, refuses a taken name."""
    result = run(
        database_url, "add-moderator", "carol", moderator=None, stdin=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert "moderator carol created" in result.output
    again = run(
        database_url, "add-moderator", "carol", moderator=None, stdin=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert again.exit_code == 1 and "already exists" in again.output
    short = run(
        database_url, "add-moderator", "--password-stdin", "dave", moderator=None, stdin="short\n"
    )
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        hashes = conn.execute(sa.text("SELECT username, password_hash FROM moderators")).all()
    engine.dispose()
    assert [h.username for h in hashes] == ["carol"]
    assert hashes[0].password_hash.startswith("$argon2id$")


def test_next_decide_and_history_in_a_terminal(accounts: str) -> None:
    """`next` claims the lowest score, `decide` records it, `history` shows both steps, each
    audited as coming from the CLI with the operating-system user who ran it."""
    ids = seed(accounts, ["a dog on a beach", "a red car"])
    shown = run(accounts, "next")
    assert shown.exit_code == 0, shown.output
    assert f"item {ids[0]}" in shown.output and "caption a dog on a beach" in shown.output
    assert "claimed by alice until" in shown.output
    assert "https://img.example/0.jpg" in shown.output
    decided = run(
        accounts,
        "decide",
        str(ids[0]),
        "confirmed_mismatch",
        "--note",
        "a cat",
        "--reason",
        "spam_scam",
    )
    assert decided.exit_code == 0, decided.output
    assert f"item {ids[0]}: confirmed_mismatch by alice" in decided.output
    history = run(accounts, "history", str(ids[0]), moderator=None)
    lines = history.output.splitlines()
    assert [line.split()[1:3] for line in lines] == [["claim", "alice"], ["decide", "alice"]]
    assert lines[1].endswith(f"confirmed_mismatch via cli ({getpass.getuser()}) note: a cat")
    entries = run(accounts, "history", "--json", str(ids[0]), moderator=None).output.splitlines()
    assert [(e["via"], e["os_user"]) for e in map(json.loads, entries)] == [
        ("cli", getpass.getuser())
    ] * 2


def test_a_moderator_cannot_decide_what_another_holds(accounts: str) -> None:
    """bob's decision on alice's item fails with a message naming the holder, exit 1."""
    (item_id,) = seed(accounts, ["a bridge"])
    assert run(accounts, "claim", str(item_id)).exit_code == 0
    result = run(accounts, "decide", str(item_id), "escalate", moderator="bob")
    assert result.exit_code == 1
    assert f"review item {item_id} is held by alice until" in result.output
    stats = json.loads(run(accounts, "stats", "--json", moderator=None).stdout)
    assert (stats["claimed"], stats["decided_total"]) == (1, 0)


def test_release_returns_items_and_stats_count_them(accounts: str) -> None:
    """`release` without an id gives back everything held; `stats` shows the counts."""
    ids = seed(accounts, ["one", "two", "three"])
    for item_id in ids[:2]:
        assert run(accounts, "claim", str(item_id)).exit_code == 0
    assert run(accounts, "decide", str(ids[0]), "not_a_mismatch").exit_code == 0
    before = json.loads(run(accounts, "stats", "--json", moderator=None).stdout)
    assert (before["pending"], before["claimed"], before["decided"]["not_a_mismatch"]) == (1, 1, 1)
    released = run(accounts, "release")
    assert released.exit_code == 0 and f"released 1 item(s): {ids[1]}" in released.output
    text = run(accounts, "stats", moderator=None).output
    assert "pending 2 " in text and "claimed 0" in text and "not_a_mismatch 1" in text
    assert "oldest pending 9" in text  # seeded 98-99 s ago


def test_an_empty_queue_exits_2(accounts: str) -> None:
    """`next` on an empty queue says so on stderr and exits 2, for scripts."""
    result = run(accounts, "next")
    assert result.exit_code == 2 and "the queue is empty" in result.output


def test_the_moderator_must_be_set_and_have_an_account(database_url: str, accounts: str) -> None:
    """Without ITMGUARD_MODERATOR, or with an unknown one, queue commands refuse to act."""
    unset = run(database_url, "next", moderator=None)
    assert unset.exit_code == 2 and "ITMGUARD_MODERATOR" in unset.output
    unknown = run(database_url, "next", moderator="mallory")
    assert unknown.exit_code == 1 and "add-moderator mallory" in unknown.output
    assert run(database_url, "disable-moderator", "bob", moderator=None).exit_code == 0
    disabled = run(database_url, "next", moderator="bob")
    assert disabled.exit_code == 1 and "no enabled moderator account 'bob'" in disabled.output


def test_terminal_output_escapes_control_characters(accounts: str) -> None:
    """A caption with terminal escape sequences or newlines prints them as escapes."""
    seed(accounts, ["evil\x1b[2J\nclaimed by nobody"])
    result = run(accounts, "next")
    assert "\x1b" not in result.output
    assert "caption evil\\x1b[2J\\nclaimed by nobody" in result.output


def test_export_labels_feeds_calibration(accounts: str, tmp_path: Path) -> None:
    """Decisions export as labelled post events; thumbnails go as base64 data."""
    ids = seed(accounts, ["a", "b", "c"], thumbnail=b"\xff\xd8\xff\xe0jpeg")
    for item_id, decision in zip(
        ids, ("confirmed_mismatch", "not_a_mismatch", "escalate"), strict=True
    ):
        assert run(accounts, "claim", str(item_id)).exit_code == 0
        reason = ["--reason", "other_policy"] if decision == "confirmed_mismatch" else []
        assert run(accounts, "decide", str(item_id), decision, *reason).exit_code == 0
    out = tmp_path / "labels.jsonl"
    result = run(accounts, "export-labels", "--out", str(out), moderator=None)
    assert result.exit_code == 0, result.output
    assert "wrote 2 labelled posts; left out 1 escalated" in result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(d["post_id"], d["label"]) for d in lines] == [("post-0", 0), ("post-1", 1)]
    assert lines[0]["image"] == {"data": "/9j/4GpwZWc="}
    assert "thumbnail" in run(accounts, "export-labels", "--help", moderator=None).output


def test_thumbnail_writes_the_stored_jpeg(accounts: str, tmp_path: Path) -> None:
    """`thumbnail` writes an inline image's stored JPEG; a URL item has none."""
    (inline,) = seed(accounts, ["x"], thumbnail=b"\xff\xd8\xff\xe0jpeg")
    target = tmp_path / "t.jpg"
    assert run(accounts, "thumbnail", str(inline), str(target), moderator=None).exit_code == 0
    assert target.read_bytes() == b"\xff\xd8\xff\xe0jpeg"
    missing = run(accounts, "thumbnail", str(inline + 99), str(target), moderator=None)
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_serve_refuses_without_a_secret(database_url: str) -> None:
    """`serve` needs ITMGUARD_REVIEW_SECRET (or --dev) and says how to make one."""
    result = run(database_url, "serve", moderator=None)
    assert result.exit_code == 2
    assert "ITMGUARD_REVIEW_SECRET" in result.output and "openssl rand -hex 32" in result.output
    short = run(database_url, "serve", moderator=None, ITMGUARD_REVIEW_SECRET="tooshort")
    assert short.exit_code == 2 and "at least 32 characters" in short.output
    assert "tooshort" not in short.output


def test_commands_refuse_an_unmigrated_database(database_url: str) -> None:
    """A database behind this release's schema is refused with the command that fixes it."""
    from alembic import command

    from worker.persistence import alembic_config

    command.downgrade(alembic_config(database_url), "0002")
    result = run(database_url, "stats", moderator=None)
    assert result.exit_code == 1 and "itmguard db upgrade" in result.output
