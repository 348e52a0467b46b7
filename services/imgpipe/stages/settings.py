"""Settings of the stage processes (detect, generate, matte): one class, since they share one image
and one environment; each process reads only the fields of its own stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from imgpipe.backends.resilience import HttpBackendConfig
from imgpipe.runtime.settings import RuntimeSettings

Backend = Literal["local", "http", "null"]


class StageSettings(RuntimeSettings):
    # Few messages per batch: each takes CPU seconds, and offsets are stored per batch.
    consumer_batch_size: int = Field(default=8, ge=1, le=10_000)
    # Messages handled at once per process (threads; runtime/consumer.py keeps offsets in order). For
    # the HTTP backends, whose calls wait on a model server.
    stage_max_in_flight: int = Field(default=1, ge=1, le=256)
    # Worker processes for a stage whose own backend is "local" (CPU-bound; stages/pool.py). None: the
    # CPUs this process may use (affinity, capped by a cgroup quota). 1: the work runs in process.
    stage_workers: int | None = Field(default=None, ge=1, le=256)

    # Stages skip tasks that ended (canceled, timed out) within this window; longer than any task lives.
    terminal_lookback_seconds: float = Field(default=3600.0, gt=0)

    # Image validation (detect).
    max_image_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0, le=89_000_000)

    # Outbound image fetches (detect): SSRF guard and caps. Comma-separated CIDRs that are allowed
    # although private (e.g. an in-cluster image host); metadata addresses need their exact /32.
    fetch_allow_networks: str = ""
    fetch_timeout_seconds: float = Field(default=20.0, gt=0)
    fetch_max_redirects: int = Field(default=3, ge=0, le=10)

    # The pet policy: detect fails a task with `no_pet_detected` unless a detection reaches these.
    pet_required: bool = True
    pet_min_score: float = Field(default=10.0, ge=0)
    pet_min_support: int = Field(default=2, ge=1)

    # The final resize (matte): the shorter side of the result, as the old system did.
    result_shorter_side: int = Field(default=350, ge=16, le=4096)

    # Model backends: "local" runs the CPU algorithms in process; "http" calls a model server; "null"
    # does no model work (backends/null.py: the benchmark's measure of the platform's own cost).
    detect_backend: Backend = "local"
    detect_url: str = "http://127.0.0.1:8090"
    detect_model: str = "pet-detector"
    generate_backend: Backend = "local"
    generate_url: str = "http://127.0.0.1:8090"
    generate_model: str = "stylizer"
    generate_api_key: SecretStr | None = None
    matte_backend: Backend = "local"
    matte_url: str = "http://127.0.0.1:8090"
    matte_model: str = "u2net"
    model_timeout_seconds: float = Field(default=60.0, gt=0)
    model_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    model_max_concurrency: int = Field(default=4, ge=1)
    model_max_retries: int = Field(default=2, ge=0)
    model_backoff_seconds: float = Field(default=0.5, ge=0)
    model_breaker_fail_max: int = Field(default=5, ge=1)
    model_breaker_reset_seconds: float = Field(default=5.0, gt=0)

    def model_server(self, url: str, model: str, api_key: SecretStr | None = None) -> HttpBackendConfig:
        """How an HTTP backend reaches its model server; the resilience knobs are shared."""
        return HttpBackendConfig(
            base_url=url,
            model=model,
            api_key=api_key.get_secret_value() if api_key else None,
            timeout_seconds=self.model_timeout_seconds,
            connect_timeout_seconds=self.model_connect_timeout_seconds,
            max_concurrency=self.model_max_concurrency,
            max_retries=self.model_max_retries,
            backoff_seconds=self.model_backoff_seconds,
            breaker_fail_max=self.model_breaker_fail_max,
            breaker_reset_seconds=self.model_breaker_reset_seconds,
        )
