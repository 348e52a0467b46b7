"""up, down (no process left, checked by pid), up again warm: on a stack of its own, as local processes."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from imgpipe.localstack import processes
from imgpipe.localstack.endpoints import COMPONENTS, EXTERNAL_SELECTORS
from imgpipe.localstack.layout import StackPaths
from imgpipe.localstack.minio import s3_client
from imgpipe.localstack.stack import BACKEND_ENV, stack_status, start_stack, stop_stack

pytestmark = pytest.mark.integration

LIFECYCLE_STACK = "lifecycle"
WARM_START_BUDGET_SECONDS = 30.0


@pytest.fixture
def local_environ() -> Iterator[dict[str, str]]:
    """This test is about our own processes: no external endpoints, no containers."""
    environ = {key: value for key, value in os.environ.items() if key not in EXTERNAL_SELECTORS.values()}
    environ[BACKEND_ENV] = "local"
    yield environ
    stop_stack(LIFECYCLE_STACK)


@pytest.mark.timeout(900)  # may include a cold install when the `stack` fixture used external endpoints
def test_down_leaves_no_process_and_a_warm_up_keeps_endpoints_and_data(local_environ: dict[str, str]) -> None:
    paths = StackPaths.for_stack(LIFECYCLE_STACK)
    first = start_stack(LIFECYCLE_STACK, environ=local_environ)
    assert stack_status(LIFECYCLE_STACK).running

    marker = uuid.uuid4().hex
    engine = sa.create_engine(first.database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE IF NOT EXISTS lifecycle_marker (value text)"))
        connection.execute(sa.text("INSERT INTO lifecycle_marker VALUES (:value)"), {"value": marker})
    engine.dispose()
    s3_client(dataclasses.asdict(first)).put_object(
        Bucket=first.s3_bucket, Key=f"lifecycle/{marker}", Body=b"kept"
    )

    records = {c: processes.read_pid_file(paths.pid_file(c)) for c in COMPONENTS}
    families = {c: record.family() for c, record in records.items() if record is not None}
    assert set(families) == set(COMPONENTS)
    assert all(families.values())

    stop_stack(LIFECYCLE_STACK)

    for component, family in families.items():
        assert processes.still_alive(family) == [], f"{component} left processes behind"
        assert not paths.pid_file(component).exists()
    assert not stack_status(LIFECYCLE_STACK).running
    assert not paths.endpoints_file.exists()

    started = time.monotonic()
    second = start_stack(LIFECYCLE_STACK, environ=local_environ)
    warm_start_seconds = time.monotonic() - started
    assert warm_start_seconds < WARM_START_BUDGET_SECONDS
    assert second == first  # same ports and credentials after a warm restart

    engine = sa.create_engine(second.database_url)
    with engine.connect() as connection:
        kept = connection.execute(sa.text("SELECT value FROM lifecycle_marker")).scalars().all()
    engine.dispose()
    assert marker in kept
    assert (
        s3_client(dataclasses.asdict(second))
        .get_object(Bucket=second.s3_bucket, Key=f"lifecycle/{marker}")["Body"]
        .read()
        == b"kept"
    )
