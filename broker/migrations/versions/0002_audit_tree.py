"""The audit Merkle tree: searchable entries, parties, stored subtree hashes, checkpoints.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 18:00:00

``audit_entries`` was created by 0001 but nothing wrote to it before this
revision, so it is recreated with its search columns rather than altered.
``messages.log_index`` keeps the index of each decision's audit entry.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Recreate audit_entries with search columns; add parties, nodes, checkpoints, log_index."""
    op.drop_index("ix_audit_entries_at", table_name="audit_entries")
    op.drop_table("audit_entries")
    op.create_table(
        "audit_entries",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=True),
        sa.Column("child", sa.String(64), nullable=True),
        sa.Column("message_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_entries"),
    )
    op.create_index("ix_audit_entries_at", "audit_entries", ["at"])
    op.create_index("ix_audit_entries_child_seq", "audit_entries", ["child", "seq"])
    op.create_index("ix_audit_entries_message_id", "audit_entries", ["message_id"])
    op.create_table(
        "audit_parties",
        sa.Column("agency", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("agency", "seq", name="pk_audit_parties"),
    )
    op.create_table(
        "audit_nodes",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name="pk_audit_nodes"),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("size", name="pk_audit_checkpoints"),
    )
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("log_index", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Back to 0001: the tree, parties and checkpoints are dropped, entries lose their columns."""
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("log_index")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_nodes")
    op.drop_table("audit_parties")
    op.drop_index("ix_audit_entries_message_id", table_name="audit_entries")
    op.drop_index("ix_audit_entries_child_seq", table_name="audit_entries")
    op.drop_index("ix_audit_entries_at", table_name="audit_entries")
    op.drop_table("audit_entries")
    op.create_table(
        "audit_entries",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_entries"),
    )
    op.create_index("ix_audit_entries_at", "audit_entries", ["at"])
