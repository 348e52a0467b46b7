"""request fingerprints on tasks; keyed batches

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 13:00:00.000000

`tasks.request_sha256` is the fingerprint of the validated request that created the task, so a repeated
idempotency key with a different request is refused (409) instead of returning the first task. Rows
written before this revision have it NULL and are taken to match any request. `batches` records a
`POST /v1/tasks:batch` sent with an Idempotency-Key, with the fingerprint of the whole batch.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("request_sha256", sa.String(length=64), nullable=True))
    op.create_table(
        "batches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_batches_tenant_idempotency_key"),
    )


def downgrade() -> None:
    op.drop_table("batches")
    op.drop_column("tasks", "request_sha256")
