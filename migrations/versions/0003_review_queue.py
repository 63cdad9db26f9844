"""The moderators' review queue: claims with a lease, decisions, an append-only audit, accounts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

`review_items.status` moves pending -> claimed -> decided (or back to pending
on release or an expired lease). Every new column is nullable or has a server
default, so the worker's insert (status 'pending' and the content columns)
stays as it is. `review_audit` refuses UPDATE, DELETE and TRUNCATE through a
trigger: rows are only ever appended.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DECISIONS = "('confirmed_mismatch', 'not_a_mismatch', 'escalate')"

_APPEND_ONLY = """
CREATE FUNCTION review_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'review_audit is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.add_column("review_items", sa.Column("claimed_by", sa.Text))
    op.add_column("review_items", sa.Column("claimed_at", sa.DateTime(timezone=True)))
    op.add_column("review_items", sa.Column("lease_expires_at", sa.DateTime(timezone=True)))
    op.add_column("review_items", sa.Column("decision", sa.Text))
    op.add_column("review_items", sa.Column("decided_by", sa.Text))
    op.add_column("review_items", sa.Column("decided_at", sa.DateTime(timezone=True)))
    op.add_column("review_items", sa.Column("note", sa.Text))
    op.alter_column("review_items", "status", server_default="pending")
    op.create_check_constraint(
        "ck_review_items_status", "review_items", "status IN ('pending', 'claimed', 'decided')"
    )
    op.create_check_constraint(
        "ck_review_items_claim",
        "review_items",
        "(status = 'claimed') = (claimed_by IS NOT NULL AND claimed_at IS NOT NULL "
        "AND lease_expires_at IS NOT NULL)",
    )
    op.create_check_constraint(
        "ck_review_items_decision",
        "review_items",
        f"(status = 'decided') = (decision IS NOT NULL AND decided_by IS NOT NULL "
        f"AND decided_at IS NOT NULL) AND (decision IS NULL OR decision IN {DECISIONS})",
    )
    # claim order: most confident mismatch first, or oldest first; only pending rows
    op.create_index(
        "ix_review_items_pending_score",
        "review_items",
        ["score", "id"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_review_items_pending_age",
        "review_items",
        ["created_at", "id"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_review_items_lease",
        "review_items",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'claimed'"),
    )
    op.create_index(
        "ix_review_items_decided_at",
        "review_items",
        ["decided_at", "id"],
        postgresql_where=sa.text("status = 'decided'"),
    )

    op.create_table(
        "review_audit",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("item_id", sa.BigInteger, sa.ForeignKey("review_items.id"), nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("moderator", sa.Text, nullable=False),
        sa.Column("decision", sa.Text),
        sa.Column("note", sa.Text),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column(
            "at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("clock_timestamp()"),
        ),
        sa.CheckConstraint(
            "action IN ('claim', 'renew', 'release', 'expire', 'decide')",
            name="ck_review_audit_action",
        ),
        sa.CheckConstraint(
            f"(action = 'decide') = (decision IS NOT NULL) "
            f"AND (decision IS NULL OR decision IN {DECISIONS})",
            name="ck_review_audit_decision",
        ),
    )
    op.create_index("ix_review_audit_item", "review_audit", ["item_id", "id"])
    op.execute(_APPEND_ONLY)
    op.execute(
        "CREATE TRIGGER review_audit_no_change BEFORE UPDATE OR DELETE ON review_audit "
        "FOR EACH ROW EXECUTE FUNCTION review_audit_append_only()"
    )
    op.execute(
        "CREATE TRIGGER review_audit_no_truncate BEFORE TRUNCATE ON review_audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION review_audit_append_only()"
    )

    op.create_table(
        "moderators",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("username", name="uq_moderators_username"),
        sa.CheckConstraint(
            "username ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'", name="ck_moderators_username"
        ),
    )


def downgrade() -> None:
    audited = op.get_bind().execute(sa.text("SELECT count(*) FROM review_audit")).scalar_one()
    if audited:
        raise RuntimeError(
            f"review_audit holds {audited} rows: downgrading below 0003 would drop the "
            "moderators' decisions and their append-only audit trail; refusing"
        )
    op.drop_table("moderators")
    op.execute("DROP TRIGGER review_audit_no_truncate ON review_audit")
    op.execute("DROP TRIGGER review_audit_no_change ON review_audit")
    op.execute("DROP FUNCTION review_audit_append_only()")
    op.drop_table("review_audit")
    for index in (
        "ix_review_items_decided_at",
        "ix_review_items_lease",
        "ix_review_items_pending_age",
        "ix_review_items_pending_score",
    ):
        op.drop_index(index, table_name="review_items")
    for constraint in (
        "ck_review_items_decision",
        "ck_review_items_claim",
        "ck_review_items_status",
    ):
        op.drop_constraint(constraint, "review_items", type_="check")
    op.alter_column("review_items", "status", server_default=None)
    for column in (
        "note",
        "decided_at",
        "decided_by",
        "decision",
        "lease_expires_at",
        "claimed_at",
        "claimed_by",
    ):
        op.drop_column("review_items", column)
