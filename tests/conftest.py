"""Shared fixtures. `stack`: the real local stack (Kafka, Postgres, MinIO) for integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from imgpipe.localstack.endpoints import Endpoints
from imgpipe.localstack.install import ensure_installed
from imgpipe.localstack.stack import components_to_install, stack_status, start_stack, stop_stack

TEST_STACK = "test"
KEEP_STACK_ENV = "IMGPIPE_KEEP_STACK"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Install before any test runs: a cold install (minutes) must not count against one test's timeout."""
    if any(item.get_closest_marker("integration") for item in session.items):
        ensure_installed(components_to_install(TEST_STACK))


@pytest.fixture(scope="session")
def stack_name() -> str:
    """The name of the stack the `stack` fixture runs (state under <cache>/stack-test/)."""
    return TEST_STACK


@pytest.fixture(scope="session")
def stack(stack_name: str) -> Iterator[Endpoints]:
    """Endpoints of the "test" stack, started for this session unless it already runs.

    Stopped at the end only if this session started it; IMGPIPE_KEEP_STACK=1 keeps it for the next run
    (a warm `start_stack` on an up stack is a no-op of a second or so).
    """
    ensure_installed(components_to_install(stack_name))
    already_running = stack_status(stack_name).running
    endpoints = start_stack(stack_name)
    yield endpoints
    if not already_running and os.environ.get(KEEP_STACK_ENV) != "1":
        stop_stack(stack_name)
