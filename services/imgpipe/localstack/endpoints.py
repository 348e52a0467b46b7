"""The endpoints of the stack's dependencies, as the IMGPIPE_* variables the services read."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

ENV_PREFIX = "IMGPIPE_"
DEFAULT_BUCKET = "imgpipe"
DEFAULT_REGION = "us-east-1"

KAFKA = "kafka"
POSTGRES = "postgres"
MINIO = "minio"
COMPONENTS: tuple[str, ...] = (KAFKA, POSTGRES, MINIO)


@dataclass(frozen=True)
class Endpoints:
    """Where Kafka, Postgres and S3 are; field names are the env var names without IMGPIPE_."""

    kafka_bootstrap_servers: str
    database_url: str  # SQLAlchemy URL, postgresql+psycopg://...
    s3_endpoint_url: str
    s3_access_key_id: str
    s3_secret_access_key: str
    s3_bucket: str = DEFAULT_BUCKET
    s3_region: str = DEFAULT_REGION

    def as_env(self) -> dict[str, str]:
        return {env_name(name): value for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Endpoints:
        values = {f.name: env[env_name(f.name)] for f in dataclasses.fields(cls) if env_name(f.name) in env}
        return cls(**values)


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


# The one variable per component whose presence means "use this endpoint, do not start the server".
EXTERNAL_SELECTORS: dict[str, str] = {
    KAFKA: env_name("kafka_bootstrap_servers"),
    POSTGRES: env_name("database_url"),
    MINIO: env_name("s3_endpoint_url"),
}


class ExternalEndpointError(ValueError):
    """An external endpoint is selected but incomplete."""


def external_endpoint_fields(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Per component the operator points at an existing server, the Endpoints fields it provides."""
    external: dict[str, dict[str, str]] = {}
    if bootstrap := environ.get(EXTERNAL_SELECTORS[KAFKA]):
        external[KAFKA] = {"kafka_bootstrap_servers": bootstrap}
    if database_url := environ.get(EXTERNAL_SELECTORS[POSTGRES]):
        external[POSTGRES] = {"database_url": database_url}
    if s3_endpoint := environ.get(EXTERNAL_SELECTORS[MINIO]):
        credentials = {
            name: environ.get(env_name(name), "") for name in ("s3_access_key_id", "s3_secret_access_key")
        }
        missing = [env_name(name) for name, value in credentials.items() if not value]
        if missing:
            raise ExternalEndpointError(
                f"{EXTERNAL_SELECTORS[MINIO]} is set, so {' and '.join(missing)} must be set too"
            )
        external[MINIO] = {
            "s3_endpoint_url": s3_endpoint,
            **credentials,
            "s3_bucket": environ.get(env_name("s3_bucket")) or DEFAULT_BUCKET,
            "s3_region": environ.get(env_name("s3_region")) or DEFAULT_REGION,
        }
    return external


def render_env_file(env: Mapping[str, str]) -> str:
    """KEY=value lines (docker --env-file, dotenv, Make `include`): values are written unquoted."""
    return "".join(f"{key}={value}\n" for key, value in env.items())


def parse_env_file(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value for key, value in pairs}


def render_exports(env: Mapping[str, str]) -> str:
    """`export KEY=value` lines for shells; generated values need no quoting, so Make reads them too."""
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def redact_url(url: str) -> str:
    """The URL with its password replaced, for printing."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"
