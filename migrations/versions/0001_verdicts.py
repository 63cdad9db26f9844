"""Verdicts and the review queue's first table.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "verdicts",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("post_id", sa.Text, nullable=False),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("error_code", sa.Text),
        sa.Column("event_time", sa.DateTime(timezone=True)),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("topic", sa.Text),
        sa.Column("partition", sa.Integer),
        sa.Column("offset", sa.BigInteger),
        sa.UniqueConstraint("post_id", "model_id", name="uq_verdicts_post_model"),
        sa.CheckConstraint("verdict IN ('match', 'mismatch', 'error')", name="ck_verdicts_verdict"),
        sa.CheckConstraint(
            "(verdict = 'error') = (error_code IS NOT NULL)", name="ck_verdicts_error_code"
        ),
        sa.CheckConstraint("(verdict = 'error') = (score IS NULL)", name="ck_verdicts_score"),
    )
    op.create_index("ix_verdicts_scored_at", "verdicts", ["scored_at"])
    op.create_table(
        "review_items",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("post_id", sa.Text, nullable=False),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("post_id", "model_id", name="uq_review_items_post_model"),
    )


def downgrade() -> None:
    op.drop_table("review_items")
    op.drop_index("ix_verdicts_scored_at", table_name="verdicts")
    op.drop_table("verdicts")
