"""Where the local stack keeps its installed servers and the state of each named stack."""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imgpipe.localstack.versions import KAFKA_VERSION, MINIO_VERSION, POSTGRES_MAJOR

CACHE_DIR_ENV = "IMGPIPE_CACHE_DIR"
DEFAULT_STACK_NAME = "dev"
_STACK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def repo_root() -> Path | None:
    """The checkout this package is installed from (the install is editable), if it is one."""
    candidate = Path(__file__).resolve().parents[3]
    return candidate if (candidate / "pyproject.toml").is_file() else None


def cache_dir() -> Path:
    """`<repo>/.cache` (ignored by git), or IMGPIPE_CACHE_DIR when set."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    root = repo_root()
    return root / ".cache" if root else Path.home() / ".cache" / "imgpipe"


@dataclass(frozen=True)
class Installation:
    """Where the installed servers live; `ensure_installed` makes them exist."""

    cache_dir: Path

    @property
    def kafka_home(self) -> Path:
        return self.cache_dir / f"kafka-{KAFKA_VERSION}"

    @property
    def kafka_libs(self) -> Path:
        return self.kafka_home / "libs"

    @property
    def kafka_core_jar(self) -> Path:
        return self.kafka_libs / f"kafka_2.13-{KAFKA_VERSION}.jar"

    @property
    def minio_home(self) -> Path:
        return self.cache_dir / f"minio-{MINIO_VERSION}"

    @property
    def minio_binary(self) -> Path:
        return self.minio_home / "minio"

    @property
    def postgres_bin(self) -> Path:
        # Debian's postgresql-15 package; not cached by us, installed with apt.
        return Path(f"/usr/lib/postgresql/{POSTGRES_MAJOR}/bin")

    @property
    def logs(self) -> Path:
        return self.cache_dir / "logs"


@dataclass(frozen=True)
class StackPaths:
    """Everything one named stack keeps: data dirs, logs, pid files, chosen ports, endpoints.env."""

    name: str
    root: Path

    @classmethod
    def for_stack(cls, name: str, cache: Path | None = None) -> StackPaths:
        if not _STACK_NAME.match(name):
            raise ValueError(f"invalid stack name {name!r}: use lower-case letters, digits, '-' and '_'")
        return cls(name=name, root=(cache or cache_dir()) / f"stack-{name}")

    @property
    def config_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def endpoints_file(self) -> Path:
        return self.root / "endpoints.env"

    @property
    def lock_file(self) -> Path:
        # Beside the stack dir, so deleting the stack dir never races with a lock holder.
        return self.root.with_name(f"stack-{self.name}.lock")

    def component_dir(self, component: str) -> Path:
        return self.root / component

    def log_file(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.root / "run" / f"{component}.pid"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock so two `up`/`down`/`install` runs (CLI, pytest) never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
