"""redis-server for the baseline: Debian's `redis-server` package, installed on demand, run as a child.

(Not named redis.py: a script run from this folder would then shadow the redis client library.)
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from imgpipe.localstack.install import InstallError, apt_install
from imgpipe.localstack.ports import LOOPBACK, assign_ports
from imgpipe.localstack.processes import PidRecord, ProcessSpec, spawn, stop
from imgpipe.localstack.waiting import wait_until

READY_TIMEOUT_SECONDS = 20.0
STOP_GRACE_SECONDS = 10.0


class RedisUnavailable(RuntimeError):
    """redis-server is missing and cannot be installed here, or it would not start."""


def installed_version() -> str | None:
    """The version of the redis-server on PATH (e.g. "7.0.15"), or None when there is none."""
    path = shutil.which("redis-server")
    if path is None:
        return None
    # "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=..."
    output = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"\bv=(\S+)", output)
    return match.group(1) if match else output.strip()


def ensure_installed() -> str:
    """Return the installed redis-server's version, installing Debian's package first if it is missing
    (as root; anywhere else a missing server is a clear error)."""
    version = installed_version()
    if version is not None:
        return version
    try:
        apt_install(["redis-server"], Path(tempfile.gettempdir()) / "apt-redis-server.log")
    except InstallError as exc:
        raise RedisUnavailable(str(exc)) from exc
    version = installed_version()
    if version is None:
        raise RedisUnavailable("apt-get installed redis-server, but it is not on PATH")
    return version


@dataclass(frozen=True)
class RedisServer:
    """One redis-server child process: loopback only, no persistence (a broker for one run)."""

    directory: Path
    port: int
    version: str
    record: PidRecord

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @classmethod
    def start(cls, directory: Path, port: int | None = None) -> RedisServer:
        """Start redis-server on `port` (a free one when None) and return once it answers PING."""
        version = ensure_installed()
        directory.mkdir(parents=True, exist_ok=True)
        port = port or assign_ports(["redis"], {})["redis"]
        executable = shutil.which("redis-server") or "redis-server"
        argv: tuple[str, ...] = (executable, "--port", str(port), "--bind", LOOPBACK, "--dir", str(directory))
        argv += ("--save", "", "--appendonly", "no")
        record = spawn(ProcessSpec(argv=argv), directory / "redis.log", directory / "redis.pid")
        server = cls(directory, port, version, record)

        def ready() -> bool:
            if not record.is_running():
                raise RedisUnavailable(f"redis-server exited while starting; see {directory / 'redis.log'}")
            return server.ping()

        try:
            wait_until(ready, READY_TIMEOUT_SECONDS, f"redis-server on port {port} to answer PING")
        except BaseException:
            server.stop()
            raise
        return server

    def ping(self) -> bool:
        client = redis.Redis(host=LOOPBACK, port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def pids(self) -> list[int]:
        return sorted(self.record.family())

    def stop(self) -> None:
        """SIGTERM (redis-server exits without saving: persistence is off), SIGKILL after a grace."""
        stop(self.record, signal.SIGTERM, STOP_GRACE_SECONDS, "redis-server")
        (self.directory / "redis.pid").unlink(missing_ok=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
