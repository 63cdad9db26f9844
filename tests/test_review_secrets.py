"""Secrets stay out of sight: database URLs are masked in every command's errors, and the
review page's key comes from the environment or a file, never a flag that `ps` shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.config import Settings
from worker.errors import ConfigError
from worker.parsers import mask_url

KEY = "k" * 40


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:hunter2-secret@db.internal:5432/itmguard",
        "postgresql+psycopg://alice:hunter2-secret@db.internal:port/itmguard",
        "postgres+psycopg://alice:hunter2/secret@db.internal/itmguard",
    ],
)
@pytest.mark.parametrize("command", [["review", "stats"], ["db", "upgrade"], ["review", "serve"]])
def test_a_malformed_database_url_is_shown_without_its_password(
    url: str, command: list[str]
) -> None:
    """Every command that refuses a bad ITMGUARD_DATABASE_URL shows it with `***` for the
    password, however malformed the URL."""
    result = CliRunner().invoke(main, command, env={"ITMGUARD_DATABASE_URL": url})
    assert result.exit_code == 2, result.output
    assert "ITMGUARD_DATABASE_URL" in result.output
    assert "hunter2" not in result.output and "alice:***@" in result.output


def test_mask_url_leaves_other_text_alone() -> None:
    """Only a URL's password is masked; text and URLs without one stay as they are."""
    assert mask_url("see postgresql://u@h/db and https://h/x?a=b@c") == (
        "see postgresql://u@h/db and https://h/x?a=b@c"
    )
    assert mask_url("kafka://user:pw@broker:9092") == "kafka://user:***@broker:9092"


def test_the_review_secret_flag_is_gone(tmp_path: Path) -> None:
    """`review serve` has no --review-secret (it would show in `ps`) but a --review-secret-file."""
    refused = CliRunner().invoke(main, ["review", "serve", "--review-secret", KEY])
    assert refused.exit_code == 2 and "No such option" in refused.output
    help_text = CliRunner().invoke(main, ["review", "serve", "--help"]).output
    assert "--review-secret-file" in help_text and "--review-secret " not in help_text


def test_the_review_secret_comes_from_a_file(tmp_path: Path) -> None:
    """ITMGUARD_REVIEW_SECRET_FILE's content (final newline dropped) is the key; a short or
    missing file is refused without showing its content; setting both sources is refused."""
    key_file = tmp_path / "review-secret"
    key_file.write_text(KEY + "\n")
    assert Settings.from_env({"ITMGUARD_REVIEW_SECRET_FILE": str(key_file)}).review_secret == KEY
    short = tmp_path / "short"
    short.write_text("tooshort-but-secret")
    for path, says in ((short, "at least 32 characters"), (tmp_path / "nope", "cannot be read")):
        with pytest.raises(ConfigError, match=says) as info:
            Settings.from_env({"ITMGUARD_REVIEW_SECRET_FILE": str(path)})
        assert "tooshort" not in str(info.value)
    with pytest.raises(ConfigError, match="set only one of ITMGUARD_REVIEW_SECRET"):
        Settings.from_env(
            {"ITMGUARD_REVIEW_SECRET": KEY, "ITMGUARD_REVIEW_SECRET_FILE": str(key_file)}
        )
