"""Revocable sessions, sign-in throttling, and where each audited step came from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

`moderators.session_generation` is copied into every session cookie; signing
out, disabling, enabling and a new password bump it, so every older cookie of
that moderator stops working on every replica at once. `review_signin_throttle`
holds failed sign-ins per account and per client address (backoff, and an
account lockout that `itmguard review unlock-moderator` lifts) in Postgres, so
the state survives restarts and is shared by every replica. `review_audit.via`
says whether a step came from the web page or the CLI, and `os_user` who ran
the CLI; rows from before this revision keep NULL in both.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "moderators",
        sa.Column("session_generation", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.add_column("review_audit", sa.Column("via", sa.Text))
    op.add_column("review_audit", sa.Column("os_user", sa.Text))
    op.create_check_constraint(
        "ck_review_audit_via",
        "review_audit",
        "(via IS NULL OR via IN ('web', 'cli')) AND (os_user IS NULL OR via = 'cli')",
    )
    op.create_table(
        "review_signin_throttle",
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True)),
        sa.Column("locked_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("kind", "key", name="pk_review_signin_throttle"),
        sa.CheckConstraint("kind IN ('account', 'address')", name="ck_review_signin_throttle_kind"),
        sa.CheckConstraint(
            "locked_at IS NULL OR kind = 'account'", name="ck_review_signin_throttle_lock"
        ),
    )
    # stale rows are swept on each sign-in attempt by their age
    op.create_index("ix_review_signin_throttle_last", "review_signin_throttle", ["last_failure_at"])


def downgrade() -> None:
    op.drop_index("ix_review_signin_throttle_last", table_name="review_signin_throttle")
    op.drop_table("review_signin_throttle")
    op.drop_constraint("ck_review_audit_via", "review_audit", type_="check")
    op.drop_column("review_audit", "os_user")
    op.drop_column("review_audit", "via")
    op.drop_column("moderators", "session_generation")
