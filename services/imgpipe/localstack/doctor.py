"""`imgpipe doctor`: version, endpoint and health of each dependency, one line each.

It checks the endpoints the services would use: IMGPIPE_* variables in the environment first, else the
named stack's endpoints.env.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import KafkaException
from sqlalchemy.exc import SQLAlchemyError

from imgpipe.localstack import kafka, minio, postgres
from imgpipe.localstack.config import DOCKER, EXTERNAL, LOCAL, load_config
from imgpipe.localstack.endpoints import (
    DEFAULT_BUCKET,
    EXTERNAL_SELECTORS,
    KAFKA,
    MINIO,
    POSTGRES,
    Endpoints,
    env_name,
    redact_url,
)
from imgpipe.localstack.layout import Installation, StackPaths, cache_dir
from imgpipe.localstack.stack import stack_endpoints
from imgpipe.localstack.versions import KAFKA_IMAGE, KAFKA_VERSION, MINIO_IMAGE, MINIO_VERSION

NOT_CONFIGURED = "not configured: run `imgpipe stack up` or set {variable}"


@dataclass(frozen=True)
class Check:
    dependency: str
    healthy: bool
    version: str
    endpoint: str
    detail: str

    def line(self) -> str:
        status = "ok  " if self.healthy else "FAIL"
        return f"{status} {self.dependency:<8} {self.version:<44} {self.endpoint:<40} {self.detail}"


def effective_fields(stack_name: str, environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Endpoint fields (environment over the stack's endpoints.env) and each component's source."""
    stack = stack_endpoints(stack_name)
    stack_fields = dataclasses.asdict(stack) if stack else {}
    fields = dict(stack_fields)
    for name in [f.name for f in dataclasses.fields(Endpoints)]:
        if value := environ.get(env_name(name)):
            fields[name] = value
    config = load_config(StackPaths.for_stack(stack_name))
    sources = {}
    for component, variable in EXTERNAL_SELECTORS.items():
        field = variable.removeprefix("IMGPIPE_").lower()
        from_stack = stack is not None and fields.get(field) == stack_fields.get(field)
        sources[component] = config.sources.get(component, LOCAL) if from_stack and config else EXTERNAL
    return fields, sources


def _kafka_version(source: str) -> str:
    if source == LOCAL:
        jar = Installation(cache_dir()).kafka_core_jar
        return f"{KAFKA_VERSION} ({jar.name})" if jar.is_file() else f"{KAFKA_VERSION} (jar missing)"
    if source == DOCKER:
        return KAFKA_IMAGE
    return "unknown (external; Kafka does not report it)"


def check_kafka(bootstrap: str | None, source: str) -> Check:
    if not bootstrap:
        detail = NOT_CONFIGURED.format(variable=EXTERNAL_SELECTORS[KAFKA])
        return Check("kafka", False, "-", "-", detail)
    version = _kafka_version(source)
    try:
        metadata = kafka.fetch_metadata(bootstrap)
    except KafkaException as error:
        return Check("kafka", False, version, bootstrap, f"metadata request failed: {error}")
    healthy = metadata.brokers > 0
    return Check(
        "kafka", healthy, version, bootstrap, f"{metadata.brokers} broker(s), {metadata.topics} topic(s)"
    )


def check_postgres(url: str | None) -> Check:
    if not url:
        return Check(
            "postgres", False, "-", "-", NOT_CONFIGURED.format(variable=EXTERNAL_SELECTORS[POSTGRES])
        )
    shown = redact_url(url)
    try:
        version = postgres.server_version(url)
    except SQLAlchemyError as error:
        return Check("postgres", False, "unknown", shown, f"connect failed: {str(error).splitlines()[0]}")
    return Check("postgres", True, version, shown, "SELECT 1 ok")


def check_s3(fields: Mapping[str, str], source: str) -> Check:
    endpoint = fields.get("s3_endpoint_url")
    if not endpoint:
        return Check("s3", False, "-", "-", NOT_CONFIGURED.format(variable=EXTERNAL_SELECTORS[MINIO]))
    version = {LOCAL: f"minio {MINIO_VERSION}", DOCKER: MINIO_IMAGE}.get(source, "unknown (external)")
    details = []
    healthy = True
    if source in (LOCAL, DOCKER):
        status = minio.health_status(endpoint)
        healthy = status == 200
        details.append(f"health/ready {status or 'no answer'}")
    bucket = fields.get("s3_bucket", DEFAULT_BUCKET)
    if healthy and {"s3_access_key_id", "s3_secret_access_key"} <= fields.keys():
        has_bucket = minio.bucket_exists(fields)
        healthy = has_bucket
        details.append(f"bucket {bucket} {'ok' if has_bucket else 'missing or not accessible'}")
    return Check("s3", healthy, version, endpoint, ", ".join(details))


def run_doctor(stack_name: str, environ: Mapping[str, str]) -> list[Check]:
    fields, sources = effective_fields(stack_name, environ)
    return [
        check_kafka(fields.get("kafka_bootstrap_servers"), sources[KAFKA]),
        check_postgres(fields.get("database_url")),
        check_s3(fields, sources[MINIO]),
    ]
