"""Chart tests: the pinned toolchain (helm, kubeconform, schemas, checkov) is installed before any test
runs, as the integration tests' stack is: a cold install (minutes) must not count against a test's
timeout. `make chart-check` installs it first anyway."""

from __future__ import annotations

import pytest

from imgpipe.deploytools.toolchain import Toolchain, ensure_toolchain


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.get_closest_marker("chart") for item in session.items):
        ensure_toolchain()


@pytest.fixture(scope="session")
def tools() -> Toolchain:
    return ensure_toolchain()
