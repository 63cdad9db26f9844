"""Shadow verdicts: each verdict row says whether its model was serving or shadowing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

`role` is 'primary' for the model whose verdicts flag posts and queue review
items, 'shadow' for a candidate scored beside it (`ITMGUARD_SHADOW_BUNDLE`),
whose verdicts are only stored. Rows written before this revision were all
the primary's, which the server default records.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "verdicts",
        sa.Column("role", sa.Text, nullable=False, server_default=sa.text("'primary'")),
    )
    op.create_check_constraint("ck_verdicts_role", "verdicts", "role IN ('primary', 'shadow')")


def downgrade() -> None:
    op.drop_constraint("ck_verdicts_role", "verdicts", type_="check")
    op.drop_column("verdicts", "role")
