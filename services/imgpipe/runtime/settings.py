"""Settings from environment variables, all under one prefix (IMGPIPE_), validated at start.

Every service reads `RuntimeSettings` (or a subclass adding its own fields). A bad value stops the
process with a message naming the variable, never a traceback deep inside a client library.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "IMGPIPE_"


class SettingsError(Exception):
    """One or more IMGPIPE_* variables are missing or invalid."""


class RuntimeSettings(BaseSettings):
    """What every imgpipe process needs: where the dependencies are and how to report."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    service_name: str = "imgpipe"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    # Spans are always made (their ids reach logs and Kafka headers); this chooses where they go.
    trace_exporter: Literal["none", "console", "otlp", "file"] = "none"
    # Where `file` appends its JSON lines (one per span).
    trace_file: str | None = None

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Extra librdkafka settings for managed clusters (SASL, TLS), as a JSON object.
    kafka_client_config: dict[str, str] = Field(default_factory=dict)

    database_url: str = "postgresql+psycopg://imgpipe:imgpipe@127.0.0.1:5432/imgpipe"

    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_bucket: str = "imgpipe"
    s3_region: str = "us-east-1"

    health_host: str = "0.0.0.0"
    health_port: int = Field(default=8081, ge=0, le=65535)
    # /healthz fails when the service loop has not reported progress for this long.
    liveness_stale_seconds: float = Field(default=120.0, gt=0)

    consumer_batch_size: int = Field(default=100, ge=1, le=10_000)
    consumer_poll_seconds: float = Field(default=0.5, gt=0)
    # How long delivery of one batch's forwards may take before the batch is handed back.
    producer_flush_seconds: float = Field(default=30.0, gt=0)
    # The dead-letter brake (runtime/brake.py): a consumer stops when more than this share of the last
    # `dead_letter_window` messages it handled, or this many in a row, were dead-lettered (Sentry's
    # 1% / 1,000). 0 turns a limit off.
    dead_letter_max_ratio: float = Field(default=0.01, ge=0, le=1)
    dead_letter_max_consecutive: int = Field(default=1000, ge=0)
    dead_letter_window: int = Field(default=1000, ge=1, le=1_000_000)


SettingsT = TypeVar("SettingsT", bound=RuntimeSettings)


def load_settings(settings_class: type[SettingsT]) -> SettingsT:
    """Read settings from the environment, turning validation errors into one readable message."""
    try:
        return settings_class()
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        variable = ENV_PREFIX + "_".join(str(part) for part in error["loc"]).upper()
        shown = "<redacted>" if "SECRET" in variable else repr(error.get("input"))
        problems.append(f"{variable}: {error['msg']} (got {shown})")
    return "invalid settings:\n  " + "\n  ".join(problems)
