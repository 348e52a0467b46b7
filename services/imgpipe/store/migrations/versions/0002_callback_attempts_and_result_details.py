"""callback attempts; the result artifact's details and the failing stage on tasks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 09:00:00.000000

`callback_attempts` holds every delivery attempt the callback service reports on the events topic
(one row per task of a batched attempt). The new task columns keep what a TaskResult carried beyond
`result_object_key`, so the admin replay can rebuild the result the callback service first received.
Rows written before this revision have them NULL (the replayed artifact then has only its key).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "callback_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("webhook_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "task_id", "webhook_id", "attempt", "outcome", name="uq_callback_attempts_task_webhook_attempt"
        ),
    )
    op.create_index(
        "ix_callback_attempts_task_attempted", "callback_attempts", ["task_id", "attempted_at"], unique=False
    )
    op.add_column("tasks", sa.Column("result_content_type", sa.String(length=100), nullable=True))
    op.add_column("tasks", sa.Column("result_width", sa.Integer(), nullable=True))
    op.add_column("tasks", sa.Column("result_height", sa.Integer(), nullable=True))
    op.add_column("tasks", sa.Column("result_size_bytes", sa.BigInteger(), nullable=True))
    op.add_column("tasks", sa.Column("result_sha256", sa.String(length=64), nullable=True))
    op.add_column("tasks", sa.Column("error_stage", sa.String(length=32), nullable=True))
    # The admin replay selects a URL's recently finished tasks.
    op.create_index(
        "ix_tasks_callback_url_completed", "tasks", ["callback_url", "completed_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_callback_url_completed", table_name="tasks")
    op.drop_column("tasks", "error_stage")
    op.drop_column("tasks", "result_sha256")
    op.drop_column("tasks", "result_size_bytes")
    op.drop_column("tasks", "result_height")
    op.drop_column("tasks", "result_width")
    op.drop_column("tasks", "result_content_type")
    op.drop_index("ix_callback_attempts_task_attempted", table_name="callback_attempts")
    op.drop_table("callback_attempts")
