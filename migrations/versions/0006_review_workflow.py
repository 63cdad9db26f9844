"""The moderators' workflow: decisions published through an outbox, reasons, undo, second
opinions, per-moderator image display, the post's author.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

`review_decisions` keeps every decision made (first and second opinions), with the id
the platform deduplicates on; an undone decision keeps its row with `undone_at` set, and
at most one live decision per item and opinion exists. `review_outbox` holds the
messages for the decisions topic, written in the decision's own transaction and marked
delivered by the worker's relay once the broker has them. `review_items.opinion` says
whether an item waits for its first decision or for a second opinion; `reason` is the
policy category of a confirmed mismatch; `author_id` comes from the post event when it
carries one. `moderators.image_blur` (0 none .. 3 strong) and `image_greyscale` are how
the review page shows that moderator the pictures.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DECISIONS = "('confirmed_mismatch', 'not_a_mismatch', 'escalate')"
ACTIONS_BEFORE = "('claim', 'renew', 'release', 'expire', 'decide')"
ACTIONS = "('claim', 'renew', 'release', 'expire', 'decide', 'undo')"


def upgrade() -> None:
    op.add_column("review_items", sa.Column("reason", sa.Text))
    op.add_column("review_items", sa.Column("author_id", sa.Text))
    op.add_column(
        "review_items", sa.Column("opinion", sa.SmallInteger, nullable=False, server_default="1")
    )
    op.create_check_constraint("ck_review_items_opinion", "review_items", "opinion IN (1, 2)")
    op.create_check_constraint(
        "ck_review_items_reason",
        "review_items",
        "reason IS NULL OR decision = 'confirmed_mismatch'",
    )
    # how many of an author's posts were flagged lately, shown beside each item
    op.create_index(
        "ix_review_items_author",
        "review_items",
        ["author_id", "created_at"],
        postgresql_where=sa.text("author_id IS NOT NULL"),
    )
    op.create_index("ix_review_items_post", "review_items", ["post_id"])
    op.add_column("review_audit", sa.Column("reason", sa.Text))
    op.drop_constraint("ck_review_audit_action", "review_audit", type_="check")
    op.create_check_constraint("ck_review_audit_action", "review_audit", f"action IN {ACTIONS}")

    op.create_table(
        "review_decisions",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("item_id", sa.BigInteger, sa.ForeignKey("review_items.id"), nullable=False),
        sa.Column("opinion", sa.SmallInteger, nullable=False),
        sa.Column("moderator", sa.Text, nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column(
            "decided_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("undone_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(f"decision IN {DECISIONS}", name="ck_review_decisions_decision"),
        sa.CheckConstraint("opinion IN (1, 2)", name="ck_review_decisions_opinion"),
        sa.CheckConstraint(
            "reason IS NULL OR decision = 'confirmed_mismatch'", name="ck_review_decisions_reason"
        ),
    )
    # no item ever holds two live decisions for the same opinion
    op.create_index(
        "uq_review_decisions_live",
        "review_decisions",
        ["item_id", "opinion"],
        unique=True,
        postgresql_where=sa.text("undone_at IS NULL"),
    )
    op.create_index(
        "ix_review_decisions_moderator", "review_decisions", ["moderator", "decided_at"]
    )

    op.create_table(
        "review_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("message_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "decision_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("review_decisions.id"),
            nullable=False,
        ),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("message_id", name="uq_review_outbox_message"),
    )
    # the relay reads undelivered rows in order
    op.create_index(
        "ix_review_outbox_undelivered",
        "review_outbox",
        ["id"],
        postgresql_where=sa.text("delivered_at IS NULL"),
    )

    op.add_column(
        "moderators", sa.Column("image_blur", sa.SmallInteger, nullable=False, server_default="2")
    )
    op.add_column(
        "moderators",
        sa.Column("image_greyscale", sa.Boolean, nullable=False, server_default=sa.true()),
    )
    op.create_check_constraint(
        "ck_moderators_image_blur", "moderators", "image_blur BETWEEN 0 AND 3"
    )


def downgrade() -> None:
    undos = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM review_audit WHERE action = 'undo'"))
        .scalar_one()
    )
    if undos:
        raise RuntimeError(
            f"review_audit holds {undos} undo rows, which the audit before 0006 cannot "
            "hold; the audit is append-only, so downgrading below 0006 is refused"
        )
    op.drop_constraint("ck_moderators_image_blur", "moderators", type_="check")
    op.drop_column("moderators", "image_greyscale")
    op.drop_column("moderators", "image_blur")
    op.drop_index("ix_review_outbox_undelivered", table_name="review_outbox")
    op.drop_table("review_outbox")
    op.drop_index("ix_review_decisions_moderator", table_name="review_decisions")
    op.drop_index("uq_review_decisions_live", table_name="review_decisions")
    op.drop_table("review_decisions")
    op.drop_constraint("ck_review_audit_action", "review_audit", type_="check")
    op.create_check_constraint(
        "ck_review_audit_action", "review_audit", f"action IN {ACTIONS_BEFORE}"
    )
    op.drop_column("review_audit", "reason")
    op.drop_index("ix_review_items_post", table_name="review_items")
    op.drop_index("ix_review_items_author", table_name="review_items")
    op.drop_constraint("ck_review_items_reason", "review_items", type_="check")
    op.drop_constraint("ck_review_items_opinion", "review_items", type_="check")
    op.drop_column("review_items", "opinion")
    op.drop_column("review_items", "author_id")
    op.drop_column("review_items", "reason")
