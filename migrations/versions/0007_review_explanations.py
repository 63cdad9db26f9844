"""Review items keep the explanation of their mismatch: which words the image contradicts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

`explanation` is the JSON document of `worker.explain.Explanation.as_json`: the
caption's score, every phrase tried with its character span and the change in
match probability its removal made, and the phrases to highlight (`culprits`).
NULL for items queued before this revision, or by a worker that does not explain.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("review_items", sa.Column("explanation", postgresql.JSONB))


def downgrade() -> None:
    op.drop_column("review_items", "explanation")
