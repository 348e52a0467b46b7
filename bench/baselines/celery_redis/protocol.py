"""What the harness and the worker processes agree on: environment variables and task names."""

from __future__ import annotations

from typing import Final

from imgpipe.objects import artifact_key

BROKER_URL_ENV: Final = "CELERY_BASELINE_BROKER_URL"
DATABASE_URL_ENV: Final = "CELERY_BASELINE_DATABASE_URL"
OBJECTS_DIR_ENV: Final = "CELERY_BASELINE_OBJECTS_DIR"
# Database connections each worker process keeps: one per task it runs at once (threads: the concurrency).
DB_POOL_SIZE_ENV: Final = "CELERY_BASELINE_DB_POOL_SIZE"
POOLS: Final = ("prefork", "threads")

STAGES: Final = ("detect", "generate", "matte")
DELIVER_CALLBACK_TASK: Final = "baseline.deliver_callback"


def stage_task(stage: str) -> str:
    return f"baseline.{stage}"


def original_key(task_id: str) -> str:
    """Where the submitted image is stored: the key imgpipe's ingest uses for an uploaded original."""
    return artifact_key(task_id, "original", "bin")


def envelope_key(task_id: str) -> str:
    """The task's envelope as the last finished stage left it (artifact keys, the pet's box)."""
    return artifact_key(task_id, "envelope", "pb")
