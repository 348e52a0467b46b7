"""Settings of the callback service (IMGPIPE_* like every service). Per-URL policies override the
`callback_default_*` values at run time; these are what a URL without a policy gets."""

from __future__ import annotations

from pydantic import Field, SecretStr

from imgpipe.runtime.settings import RuntimeSettings


class CallbackSettings(RuntimeSettings):
    service_name: str = "callback"

    # Where faust keeps its tables' local copies (RocksDB through rocksdict); the changelog topics
    # are the source of truth, so an emptied directory only costs a longer recovery.
    callback_store: str = "rocksdb://"
    callback_data_dir: str = "/tmp/imgpipe-callback"

    # Defaults of a URL's policy.
    callback_default_rate_per_second: float = Field(default=10.0, gt=0)
    callback_default_burst: int = Field(default=20, ge=1)
    callback_default_batch_size: int = Field(default=50, ge=1, le=1000)
    callback_default_max_delay_ms: int = Field(default=2000, ge=0)
    callback_default_timeout_ms: int = Field(default=10_000, gt=0)

    # Retries of one request: attempts in all, and the jittered exponential backoff between them.
    callback_max_attempts: int = Field(default=6, ge=1, le=50)
    callback_backoff_base_seconds: float = Field(default=5.0, gt=0)
    callback_backoff_cap_seconds: float = Field(default=600.0, gt=0)
    # Per URL: consecutive failures that open its circuit, and how long it stays open.
    callback_breaker_fail_max: int = Field(default=5, ge=1)
    callback_breaker_reset_seconds: float = Field(default=30.0, gt=0)
    # Requests in flight at once to one URL, and in all from this process.
    callback_max_in_flight_per_url: int = Field(default=4, ge=1)
    callback_max_concurrent_sends: int = Field(default=512, ge=1)

    # Results inline (base64) only up to this size; larger ones are sent as the presigned URL only.
    callback_inline_max_bytes: int = Field(default=1024 * 1024, ge=0)
    result_url_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0, le=7 * 24 * 3600)
    s3_public_endpoint_url: str | None = None

    # Comma-separated master keys tenants' signing secrets derive from; the first is current.
    webhook_signing_keys: SecretStr = SecretStr("")
    # CIDRs a callback may reach although private (the SSRF guard refuses the rest).
    callback_allow_networks: str = ""
