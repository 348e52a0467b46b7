"""Settings of the ingest processes (IMGPIPE_* like every service)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from imgpipe.runtime.settings import RuntimeSettings


class IngestSettings(RuntimeSettings):
    service_name: str = "ingest"
    api_host: str = "0.0.0.0"
    api_port: int = Field(default=8080, ge=0, le=65535)
    # Inline images are base64 in the request; the decoded bytes must stay under this cap.
    max_inline_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    # Request bodies over this are a 413 before they are read whole: room for the largest inline image
    # (base64 is 4/3 of the bytes) plus the rest of the request.
    max_request_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_batch_tasks: int = Field(default=100, ge=1, le=1000)
    # A task not terminal this long after acceptance is failed with `timeout` by the reaper.
    task_time_limit_seconds: float = Field(default=600.0, gt=0)
    prefer_wait_max_seconds: float = Field(default=60.0, ge=0)
    # Presigned result URLs name this endpoint (what clients reach), defaulting to the S3 endpoint.
    s3_public_endpoint_url: str | None = None
    result_url_ttl_seconds: int = Field(default=3600, gt=0)
    outbox_batch_size: int = Field(default=500, ge=1)
    outbox_idle_seconds: float = Field(default=0.2, gt=0)
    reaper_interval_seconds: float = Field(default=5.0, gt=0)
    # Tenants' API keys are cached this long, so a revoked key stops working within it.
    api_key_cache_seconds: float = Field(default=30.0, ge=0)
    # Comma-separated webhook master keys, the current one first (the callback service's setting of the
    # same name): GET /v1/webhook-secret hands tenants the secrets derived from them. Unset: 404.
    webhook_signing_keys: SecretStr | None = None
    # Bearer token of the admin API (/v1/admin/...); unset or empty turns the admin API off (404).
    admin_token: SecretStr | None = None
    # A callback replay sends at most this many tasks per request (oldest completion first).
    admin_replay_limit: int = Field(default=10_000, ge=1, le=100_000)

    def webhook_master_keys(self) -> list[str]:
        if self.webhook_signing_keys is None:
            return []
        return [key.strip() for key in self.webhook_signing_keys.get_secret_value().split(",") if key.strip()]

    def admin_token_value(self) -> str | None:
        token = self.admin_token.get_secret_value() if self.admin_token is not None else ""
        return token or None
