"""Review items keep what a moderator needs: caption, image URL or thumbnail, event time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("review_items", sa.Column("caption", sa.Text, nullable=False, server_default=""))
    op.alter_column("review_items", "caption", server_default=None)
    op.add_column("review_items", sa.Column("image_url", sa.Text))
    op.add_column("review_items", sa.Column("thumbnail", sa.LargeBinary))
    op.add_column("review_items", sa.Column("event_time", sa.DateTime(timezone=True)))


def downgrade() -> None:
    for column in ("event_time", "thumbnail", "image_url", "caption"):
        op.drop_column("review_items", column)
