"""Initial schema: messages, recipients, status events, directory, consents, deadlines, audit.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00

Hand-written to match ``broker.store.METADATA``; the store holds metadata and
signed payloads only, never content, keys or personnummer.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit serial.
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table of the broker's store."""
    op.create_table(
        "messages",
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("sender_kid", sa.String(64), nullable=False),
        sa.Column("child", sa.String(64), nullable=False),
        sa.Column("basis_type", sa.String(64), nullable=False),
        sa.Column("basis_ref", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("thread", sa.String(64), nullable=False),
        sa.Column("in_reply_to", sa.String(64), nullable=True),
        sa.Column("created", _utc(), nullable=False),
        sa.Column("expires", _utc(), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("rule", sa.String(64), nullable=True),
        sa.Column("legal_ref", sa.String(200), nullable=True),
        sa.Column("routed_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("message_id", name="pk_messages"),
    )
    op.create_index("ix_messages_child", "messages", ["child"])
    op.create_index("ix_messages_thread", "messages", ["thread"])

    op.create_table(
        "message_recipients",
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("agency", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.message_id"],
            name="fk_message_recipients_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "agency", name="pk_message_recipients"),
    )

    op.create_table(
        "status_events",
        sa.Column("id", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("agency", sa.String(64), nullable=True),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("recorded_at", _utc(), nullable=False),
        sa.Column("signer", sa.String(64), nullable=False),
        sa.Column("receipt_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("answer", sa.String(64), nullable=True),
        sa.Column("decline_reason", sa.String(64), nullable=True),
        sa.Column("staff_id", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.message_id"],
            name="fk_status_events_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_status_events"),
    )
    op.create_index("ix_status_events_message_id", "status_events", ["message_id"])
    receipt_present = sa.text("receipt_id IS NOT NULL")
    op.create_index(
        "uq_status_events_receipt_id",
        "status_events",
        ["receipt_id"],
        unique=True,
        sqlite_where=receipt_present,
        postgresql_where=receipt_present,
    )

    op.create_table(
        "directory_entries",
        sa.Column("agency", sa.String(64), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("issued_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("agency", "kid", name="pk_directory_entries"),
    )

    op.create_table(
        "consents",
        sa.Column("consent_id", sa.String(64), nullable=False),
        sa.Column("child", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("valid_from", _utc(), nullable=False),
        sa.Column("valid_until", _utc(), nullable=False),
        sa.Column("registered_at", _utc(), nullable=False),
        sa.Column("revoked_at", _utc(), nullable=True),
        sa.Column("revocation_payload", sa.Text(), nullable=True),
        sa.Column("revocation_signature", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("consent_id", name="pk_consents"),
    )
    op.create_index("ix_consents_child", "consents", ["child"])

    op.create_table(
        "deadlines",
        sa.Column("id", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("agency", sa.String(64), nullable=True),
        sa.Column("due_at", _utc(), nullable=False),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_at", _utc(), nullable=True),
        sa.Column("closed_at", _utc(), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.message_id"],
            name="fk_deadlines_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deadlines"),
        sa.UniqueConstraint(
            "message_id", "rule", "agency", name="uq_deadlines_message_id_rule_agency"
        ),
    )
    op.create_index("ix_deadlines_state_due_at", "deadlines", ["state", "due_at"])

    op.create_table(
        "audit_entries",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_entries"),
    )
    op.create_index("ix_audit_entries_at", "audit_entries", ["at"])


def downgrade() -> None:
    """Drop every table of the broker's store."""
    op.drop_index("ix_audit_entries_at", table_name="audit_entries")
    op.drop_table("audit_entries")
    op.drop_index("ix_deadlines_state_due_at", table_name="deadlines")
    op.drop_table("deadlines")
    op.drop_index("ix_consents_child", table_name="consents")
    op.drop_table("consents")
    op.drop_table("directory_entries")
    op.drop_index("uq_status_events_receipt_id", table_name="status_events")
    op.drop_index("ix_status_events_message_id", table_name="status_events")
    op.drop_table("status_events")
    op.drop_table("message_recipients")
    op.drop_index("ix_messages_thread", table_name="messages")
    op.drop_index("ix_messages_child", table_name="messages")
    op.drop_table("messages")
