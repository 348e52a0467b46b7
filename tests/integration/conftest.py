"""Fixtures for tests of the product's services: registry topics, migrated database, a tenant, and the
whole pipeline running as processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka.admin import AdminClient
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.client import ApiClient, TopicSubmitter
from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.contracts.topics_admin import apply_topics
from imgpipe.ingest.settings import IngestSettings
from imgpipe.ingest.tenants import create_tenant
from imgpipe.localstack.endpoints import Endpoints
from imgpipe.localstack.pipeline import DEMO_TENANT, SERVICES, LocalPipeline
from imgpipe.store.db import make_engine, make_sessions, upgrade
from imgpipe.testing.http import ALLOWED_IMAGE_HOST


@pytest.fixture(scope="session")
def registry_topics(stack: Endpoints) -> None:
    """Every registry topic exists on the test broker (idempotent, as `imgpipe topics apply`)."""
    apply_topics(AdminClient({"bootstrap.servers": stack.kafka_bootstrap_servers}), list(default_registry()))


@pytest.fixture(scope="session")
def ingest_settings(stack: Endpoints) -> IngestSettings:
    env = stack.as_env()
    return IngestSettings(
        kafka_bootstrap_servers=env["IMGPIPE_KAFKA_BOOTSTRAP_SERVERS"],
        database_url=env["IMGPIPE_DATABASE_URL"],
        s3_endpoint_url=env["IMGPIPE_S3_ENDPOINT_URL"],
        s3_access_key_id=env["IMGPIPE_S3_ACCESS_KEY_ID"],
        s3_secret_access_key=env["IMGPIPE_S3_SECRET_ACCESS_KEY"],
        s3_bucket=env["IMGPIPE_S3_BUCKET"],
        s3_region=env["IMGPIPE_S3_REGION"],
        consumer_poll_seconds=0.1,
    )


@pytest.fixture(scope="session")
def sessions(ingest_settings: IngestSettings) -> Iterator[sessionmaker[Session]]:
    upgrade(ingest_settings.database_url)
    engine = make_engine(ingest_settings.database_url)
    yield make_sessions(engine)
    engine.dispose()


@dataclass(frozen=True)
class TestTenant:
    id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture
def tenant(sessions: sessionmaker[Session]) -> TestTenant:
    """A fresh tenant per test, with generous limits unless a test makes its own."""
    tenant_id = f"t-{uuid.uuid4().hex[:12]}"
    with sessions.begin() as session:
        api_key = create_tenant(session, tenant_id, "test tenant", rate_per_second=1000, burst=1000)
    return TestTenant(tenant_id, api_key)


# Settings every service of the test pipeline runs with.
PIPELINE_TEST_SETTINGS = {
    # The image host tests serve from; everything else private stays refused (SSRF tests).
    "IMGPIPE_FETCH_ALLOW_NETWORKS": f"{ALLOWED_IMAGE_HOST}/32",
    "IMGPIPE_REAPER_INTERVAL_SECONDS": "1",
    # Callback receivers listen on loopback; retries and breakers on a test's time scale.
    "IMGPIPE_CALLBACK_ALLOW_NETWORKS": "127.0.0.1/32",
    "IMGPIPE_CALLBACK_MAX_ATTEMPTS": "4",
    "IMGPIPE_CALLBACK_BACKOFF_BASE_SECONDS": "0.5",
    "IMGPIPE_CALLBACK_BACKOFF_CAP_SECONDS": "4",
    "IMGPIPE_CALLBACK_BREAKER_RESET_SECONDS": "3",
    "IMGPIPE_CALLBACK_DEFAULT_TIMEOUT_MS": "2000",
    "IMGPIPE_CONSUMER_POLL_SECONDS": "0.1",
    "IMGPIPE_LOG_LEVEL": "INFO",
    # Every service appends its spans to its own JSON-lines file (LocalPipeline.trace_file): test_tracing.
    "IMGPIPE_TRACE_EXPORTER": "file",
    # A killed worker's partitions move after the session timeout; keep the kill -9 tests short.
    "IMGPIPE_KAFKA_CLIENT_CONFIG": '{"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}',
}


@pytest.fixture(scope="session")
def pipeline(stack: Endpoints, stack_name: str) -> Iterator[LocalPipeline]:
    """Every imgpipe service running as its own process on the test stack, as `make up` runs them."""
    local = LocalPipeline(stack_name, stack)
    local.up(PIPELINE_TEST_SETTINGS)
    yield local
    local.down()


@pytest.fixture
def api(pipeline: LocalPipeline) -> Iterator[ApiClient]:
    client = ApiClient(pipeline.api_url, pipeline.api_key)
    yield client
    client.close()


@pytest.fixture
def submitter(pipeline: LocalPipeline) -> TopicSubmitter:
    return TopicSubmitter(
        {"bootstrap.servers": pipeline.endpoints.kafka_bootstrap_servers},
        default_registry().name(TopicKey.SUBMIT),
        DEMO_TENANT,
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """When a test of the running pipeline fails, show the warnings and errors its services logged."""
    report: pytest.TestReport = yield
    pipeline = getattr(item, "funcargs", {}).get("pipeline")
    if report.failed and isinstance(pipeline, LocalPipeline):
        for service in SERVICES:
            tail = pipeline.log_tail(service, lines=2000).splitlines()
            worrying = [line for line in tail if '"WARNING"' in line or '"ERROR"' in line]
            if worrying:
                report.sections.append((f"{service} log (warnings and errors)", "\n".join(worrying[-15:])))
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that need the whole pipeline last: once its services run, they consume the
    registry's topics in their real groups, which the ingest tests drive by hand."""
    items.sort(key=lambda item: "pipeline" in getattr(item, "fixturenames", ()))
