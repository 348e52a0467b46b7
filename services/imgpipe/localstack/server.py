"""The shape every locally run server of the stack shares; kafka.py, postgres.py and minio.py fill it in."""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from imgpipe.localstack.config import StackConfig
from imgpipe.localstack.layout import Installation, StackPaths
from imgpipe.localstack.processes import ProcessSpec


class LocalServer(ABC):
    """One server process: prepared once, started, probed until ready, then bootstrapped."""

    component: ClassVar[str]
    port_names: ClassVar[tuple[str, ...]]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    stop_grace_seconds: ClassVar[float] = 30.0

    def __init__(self, paths: StackPaths, config: StackConfig, installation: Installation) -> None:
        self.paths = paths
        self.config = config
        self.installation = installation

    @property
    def home(self) -> Path:
        return self.paths.component_dir(self.component)

    def port(self, name: str | None = None) -> int:
        return self.config.ports[name or self.port_names[0]]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port()}"

    @abstractmethod
    def prepare(self) -> None:
        """Create and initialise the data dir the first time; cheap and idempotent afterwards."""

    @abstractmethod
    def process(self) -> ProcessSpec:
        """The command line that runs the server in the foreground."""

    @abstractmethod
    def is_ready(self) -> bool:
        """One readiness probe; False (not an exception) while the server is still starting."""

    def bootstrap(self) -> None:  # noqa: B027 - optional hook, most servers need nothing
        """After readiness: create what the services expect (role, database, bucket). Idempotent."""

    @abstractmethod
    def endpoint_fields(self) -> dict[str, str]:
        """This server's part of Endpoints."""
