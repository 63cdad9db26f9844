"""Moderator accounts: Argon2id password hashes, sign-in, enabling and disabling.

Accounts live in `moderators`, with Argon2id password hashes (argon2-cffi's
defaults, the RFC 9106 low-memory profile); no password is ever stored or
logged. Disabling an account gives its held items back to the queue at once
(`worker.review.queue.release_all`) instead of leaving them to wait out their
leases.

Every account has a session generation that each session cookie carries:
signing out, disabling, enabling and a new password all bump it, so every
earlier session of that moderator stops working at its next request, on
every replica (`worker.review.sessions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from worker.config import MODERATOR_NAME
from worker.errors import ModeratorExists, ReviewError, UnknownModerator
from worker.persistence import translated
from worker.review.origin import Origin
from worker.review.queue import release_all

__all__ = [
    "MIN_PASSWORD_CHARS",
    "Moderator",
    "add_moderator",
    "authenticate",
    "disable_moderator",
    "end_sessions",
    "get_moderator",
    "require_moderator",
    "set_password",
]

MIN_PASSWORD_CHARS = 12

_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("itmguard: no such moderator")
_COLUMNS = "username, password_hash, created_at, disabled, session_generation"
_NEXT_GENERATION = "session_generation = session_generation + 1"


@dataclass(frozen=True)
class Moderator:
    """A moderator account."""

    username: str
    password_hash: str = field(repr=False)
    created_at: datetime
    disabled: bool
    session_generation: int


def _check_username(username: str) -> None:
    if not MODERATOR_NAME.fullmatch(username):
        raise ReviewError(
            None,
            "a moderator name is 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit",
        )


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ReviewError(None, f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > 1024 or "\x00" in password:
        raise ReviewError(None, "a password is at most 1024 characters, without NUL")


def add_moderator(engine: sa.Engine, username: str, password: str) -> Moderator:
    """Create an enabled moderator account, storing only an Argon2id hash of `password`.

    Raises:
        ReviewError: the name or the password is not acceptable.
        ModeratorExists: the name is taken.
    """
    _check_username(username)
    _check_password(password)
    hashed = _HASHER.hash(password)
    try:
        with translated(), engine.begin() as conn:
            row = conn.execute(
                sa.text(
                    "INSERT INTO moderators (username, password_hash) VALUES (:u, :h) "
                    f"RETURNING {_COLUMNS}"
                ),
                {"u": username, "h": hashed},
            ).one()
    except sa.exc.IntegrityError as exc:
        raise ModeratorExists(username) from exc
    return Moderator(**row._mapping)


def set_password(engine: sa.Engine, username: str, password: str) -> None:
    """Replace `username`'s password; their web sessions end.

    Raises:
        ReviewError: the password is not acceptable.
        UnknownModerator: no such account.
    """
    _check_password(password)
    hashed = _HASHER.hash(password)
    with translated(), engine.begin() as conn:
        result = conn.execute(
            sa.text(
                f"UPDATE moderators SET password_hash = :h, {_NEXT_GENERATION} WHERE username = :u"
            ),
            {"u": username, "h": hashed},
        )
    if not result.rowcount:
        raise UnknownModerator(username)


def disable_moderator(
    engine: sa.Engine, username: str, *, disabled: bool = True, origin: Origin | None = None
) -> list[int]:
    """Disable (or re-enable) an account; a disabled moderator's held items go back to the queue.

    Either way her sessions end: a re-enabled moderator signs in again rather
    than finding the sessions she had before she was disabled working again.
    Returns the ids of the items released.

    Raises:
        UnknownModerator: no such account.
    """
    with translated(), engine.begin() as conn:
        result = conn.execute(
            sa.text(f"UPDATE moderators SET disabled = :d, {_NEXT_GENERATION} WHERE username = :u"),
            {"u": username, "d": disabled},
        )
    if not result.rowcount:
        raise UnknownModerator(username)
    return release_all(engine, username, origin=origin) if disabled else []


def end_sessions(engine: sa.Engine, username: str) -> None:
    """End every session `username` has (signing out ends them all, on every browser)."""
    with translated(), engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE moderators SET {_NEXT_GENERATION} WHERE username = :u"),
            {"u": username},
        )


def get_moderator(engine: sa.Engine, username: str) -> Moderator | None:
    """The account named `username`, enabled or not, or None."""
    with translated(), engine.connect() as conn:
        row = conn.execute(
            sa.text(f"SELECT {_COLUMNS} FROM moderators WHERE username = :u"),
            {"u": username},
        ).one_or_none()
    return None if row is None else Moderator(**row._mapping)


def require_moderator(engine: sa.Engine, username: str | None) -> Moderator:
    """The enabled account named `username`.

    Raises:
        UnknownModerator: no such account, or it is disabled.
    """
    moderator = None if username is None else get_moderator(engine, username)
    if moderator is None or moderator.disabled:
        raise UnknownModerator(username or "")
    return moderator


def authenticate(engine: sa.Engine, username: str, password: str) -> Moderator | None:
    """The enabled account when `password` is right, else None.

    Unknown and disabled names cost the same hash check as a wrong password,
    so response times do not tell which names exist. A hash made with weaker
    parameters than today's is replaced on success (which ends the account's
    other sessions, as any new hash does).
    """
    moderator = get_moderator(engine, username) if MODERATOR_NAME.fullmatch(username) else None
    hashed = moderator.password_hash if moderator is not None else _DUMMY_HASH
    try:
        _HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return None
    if moderator is None or moderator.disabled:
        return None
    if _HASHER.check_needs_rehash(hashed):
        set_password(engine, username, password)
        moderator = get_moderator(engine, username)
    return moderator
