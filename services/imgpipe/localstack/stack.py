"""Start, stop and inspect a named local stack: Kafka, Postgres and MinIO as real server processes.

Python API used by the CLI, the tests and other code:
    ensure_installed(components=COMPONENTS) -> Installation
    start_stack(name="dev") -> Endpoints
    stop_stack(name="dev") -> None
    stack_status(name="dev") -> StackStatus
    stack_endpoints(name="dev") -> Endpoints | None
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from imgpipe.localstack import docker_backend, processes
from imgpipe.localstack.config import DOCKER, EXTERNAL, LOCAL, StackConfig, load_config, save_config
from imgpipe.localstack.endpoints import (
    COMPONENTS,
    EXTERNAL_SELECTORS,
    Endpoints,
    external_endpoint_fields,
    parse_env_file,
    render_env_file,
)
from imgpipe.localstack.errors import LocalStackError
from imgpipe.localstack.install import ensure_installed
from imgpipe.localstack.kafka import KafkaServer
from imgpipe.localstack.layout import DEFAULT_STACK_NAME, Installation, StackPaths, cache_dir, file_lock
from imgpipe.localstack.minio import MinioServer
from imgpipe.localstack.parallel import describe_errors, run_parallel
from imgpipe.localstack.ports import assign_ports
from imgpipe.localstack.postgres import PostgresServer
from imgpipe.localstack.server import LocalServer
from imgpipe.localstack.waiting import wait_until

__all__ = [
    "COMPONENTS",
    "ComponentStatus",
    "Endpoints",
    "StackError",
    "StackStatus",
    "components_to_install",
    "ensure_installed",
    "select_backend",
    "stack_endpoints",
    "stack_status",
    "start_stack",
    "stop_stack",
]

log = logging.getLogger(__name__)

BACKEND_ENV = "IMGPIPE_STACK_BACKEND"
READY_TIMEOUT_SECONDS = 120.0
SERVER_CLASSES: dict[str, type[LocalServer]] = {
    server.component: server for server in (KafkaServer, PostgresServer, MinioServer)
}


class StackError(LocalStackError):
    """The stack could not be started or stopped; the message names the component and its log."""


def select_backend(
    environ: Mapping[str, str], engine_available: Callable[[], bool] = docker_backend.engine_available
) -> str:
    """local or docker: containers when a Docker engine answers, unless IMGPIPE_STACK_BACKEND=local."""
    choice = environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice == LOCAL:
        return LOCAL
    if choice == DOCKER:
        if not engine_available():
            raise StackError(f"{BACKEND_ENV}=docker but no Docker engine answers `docker info`")
        return DOCKER
    if choice != "auto":
        raise StackError(f"{BACKEND_ENV} must be auto, local or docker, not {choice!r}")
    return DOCKER if engine_available() else LOCAL


def external_components(paths: StackPaths, environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Components the environment points elsewhere, with the Endpoints fields it gives for them.

    A variable naming this stack's own local endpoint (a shell that sourced `imgpipe stack env`) does
    not make its component external: `up` starts it as usual instead of silently starting nothing.
    """
    config = load_config(paths)
    own: dict[str, dict[str, str]] = {}
    if config is not None and config.backend == LOCAL:
        installation = Installation(cache_dir())
        for server in _servers(paths, config, installation):
            if all(name in config.ports for name in server.port_names):
                own[server.component] = server.endpoint_fields()
    external = {}
    for component, fields in external_endpoint_fields(environ).items():
        if own.get(component, {}).items() >= fields.items():
            log.debug("%s: %s names this stack's own server", component, EXTERNAL_SELECTORS[component])
        else:
            external[component] = fields
    return external


def components_to_install(
    name: str = DEFAULT_STACK_NAME, environ: Mapping[str, str] | None = None
) -> list[str]:
    """The components `start_stack(name)` would run as local processes under this environment."""
    environ = os.environ if environ is None else environ
    external = external_components(StackPaths.for_stack(name), environ)
    to_run = [c for c in COMPONENTS if c not in external]
    return to_run if to_run and select_backend(environ) == LOCAL else []


def _servers(paths: StackPaths, config: StackConfig, installation: Installation) -> list[LocalServer]:
    return [server_class(paths, config, installation) for server_class in SERVER_CLASSES.values()]


def _is_running(paths: StackPaths, component: str) -> bool:
    record = processes.read_pid_file(paths.pid_file(component))
    return record is not None and record.is_running()


def _assign_ports(paths: StackPaths, config: StackConfig, components: list[str]) -> None:
    """Keep the remembered ports (warm restarts keep their endpoints) unless one was taken meanwhile."""
    names = [name for c in components for name in SERVER_CLASSES[c].port_names]
    keep = [name for c in components if _is_running(paths, c) for name in SERVER_CLASSES[c].port_names]
    chosen = assign_ports(names, config.ports, keep=keep)
    for name, port in chosen.items():
        if name in config.ports and config.ports[name] != port:
            log.warning("%s: port %d is taken, using %d", name, config.ports[name], port)
    config.ports.update(chosen)


def _start_server(server: LocalServer) -> bool:
    """Start one server unless it already runs; returns whether this call started it."""
    name, paths = server.component, server.paths
    record = processes.read_pid_file(paths.pid_file(name))
    if record is not None and record.is_running():
        wait_until(server.is_ready, READY_TIMEOUT_SECONDS, f"{name} (pid {record.pid}) to be ready")
        server.bootstrap()
        log.info("%s: already running (pid %d) on %s", name, record.pid, server.address)
        return False
    if record is not None:
        log.info("%s: removing stale pid file (pid %d is gone)", name, record.pid)
        processes.stop(record, server.stop_signal, 0, name)  # leftovers of its group, if any
        paths.pid_file(name).unlink(missing_ok=True)
    started_at = time.monotonic()
    server.prepare()
    spawned = processes.spawn(server.process(), paths.log_file(name), paths.pid_file(name))

    def ready_or_dead() -> bool:
        if not spawned.is_running():
            raise StackError(f"{name} exited while starting; see {_log_tail(paths, name)}")
        return server.is_ready()

    try:
        wait_until(ready_or_dead, READY_TIMEOUT_SECONDS, f"{name} to be ready")
        server.bootstrap()
    except BaseException:
        processes.stop(spawned, server.stop_signal, server.stop_grace_seconds, name)
        paths.pid_file(name).unlink(missing_ok=True)
        raise
    log.info(
        "%s: started (pid %d) on %s in %.1f s",
        name,
        spawned.pid,
        server.address,
        time.monotonic() - started_at,
    )
    return True


def _log_tail(paths: StackPaths, component: str, lines: int = 15) -> str:
    log_file = paths.log_file(component)
    try:
        tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return str(log_file)
    return f"{log_file}:\n  " + "\n  ".join(tail)


def _stop_server(paths: StackPaths, server_class: type[LocalServer]) -> None:
    name = server_class.component
    record = processes.read_pid_file(paths.pid_file(name))
    if record is None:
        return
    processes.stop(record, server_class.stop_signal, server_class.stop_grace_seconds, name)
    if record.is_running() or record.family():
        raise StackError(f"{name} (pid {record.pid}) is still running after SIGKILL")
    paths.pid_file(name).unlink(missing_ok=True)
    log.info("%s: stopped (pid %d)", name, record.pid)


def _start_local(paths: StackPaths, config: StackConfig, components: list[str]) -> dict[str, dict[str, str]]:
    installation = ensure_installed(components)
    _assign_ports(paths, config, components)
    save_config(paths, config)
    servers = [server for server in _servers(paths, config, installation) if server.component in components]
    started, errors = run_parallel({server.component: partial(_start_server, server) for server in servers})
    if errors:
        # Do not leave half a stack behind: stop what this call started, then report every failure.
        for server in servers:
            if started.get(server.component):
                _stop_server(paths, type(server))
        raise StackError(describe_errors(errors))
    return {server.component: server.endpoint_fields() for server in servers}


def start_stack(name: str = DEFAULT_STACK_NAME, environ: Mapping[str, str] | None = None) -> Endpoints:
    """Bring the named stack up (a no-op for what already runs) and return its endpoints.

    Components whose endpoint the environment already names (IMGPIPE_KAFKA_BOOTSTRAP_SERVERS,
    IMGPIPE_DATABASE_URL, IMGPIPE_S3_ENDPOINT_URL) are not started; the given endpoint is used.
    """
    environ = os.environ if environ is None else environ
    paths = StackPaths.for_stack(name)
    external = external_components(paths, environ)
    for component in external:
        log.info("%s: external, not started (%s is set)", component, EXTERNAL_SELECTORS[component])
    to_run = [component for component in COMPONENTS if component not in external]
    backend = select_backend(environ) if to_run else LOCAL
    with file_lock(paths.lock_file):
        config = load_config(paths) or StackConfig()
        if backend == DOCKER:
            served = docker_backend.start_containers(paths, config, to_run)
        else:
            served = _start_local(paths, config, to_run)
        config.backend = backend
        config.sources = {
            component: (EXTERNAL if component in external else backend) for component in COMPONENTS
        }
        save_config(paths, config)
        fields = {
            key: value for part in (*served.values(), *external.values()) for key, value in part.items()
        }
        endpoints = Endpoints(**fields)
        paths.endpoints_file.write_text(render_env_file(endpoints.as_env()))
    return endpoints


def stop_stack(name: str = DEFAULT_STACK_NAME) -> None:
    """Stop every server of the named stack and verify by pid that none is left. Data dirs stay."""
    paths = StackPaths.for_stack(name)
    with file_lock(paths.lock_file):
        config = load_config(paths)
        if config is not None and config.backend == DOCKER:
            docker_backend.stop_containers(name)
        _, errors = run_parallel(
            {component: partial(_stop_server, paths, server) for component, server in SERVER_CLASSES.items()}
        )
        paths.endpoints_file.unlink(missing_ok=True)
    if errors:
        raise StackError(describe_errors(errors))


def delete_stack(name: str) -> None:
    """Stop the stack and remove its state (data dirs included)."""
    stop_stack(name)
    paths = StackPaths.for_stack(name)
    with file_lock(paths.lock_file):
        shutil.rmtree(paths.root, ignore_errors=True)


@dataclass(frozen=True)
class ComponentStatus:
    component: str
    state: str  # running, stopped, stale (pid file of a dead process), external, docker
    pid: int | None
    endpoint: str | None


@dataclass(frozen=True)
class StackStatus:
    name: str
    root: str
    components: tuple[ComponentStatus, ...]

    @property
    def running(self) -> bool:
        return all(c.state in ("running", EXTERNAL, DOCKER) for c in self.components)


def stack_status(name: str = DEFAULT_STACK_NAME) -> StackStatus:
    """What runs now, from pid files (processes) or the Docker engine (containers); no network probes."""
    paths = StackPaths.for_stack(name)
    config = load_config(paths) or StackConfig()
    endpoints = stack_endpoints(name)
    statuses = []
    for component, server_class in SERVER_CLASSES.items():
        # Sources describe the last `up`; once the stack is down, only its own servers matter.
        source = config.sources.get(component, LOCAL) if endpoints else LOCAL
        server = server_class(paths, config, Installation(cache_dir()))
        endpoint = server.address if config.ports.get(server_class.port_names[0]) else None
        if source == EXTERNAL:
            endpoint = endpoints.as_env()[EXTERNAL_SELECTORS[component]] if endpoints else None
            statuses.append(ComponentStatus(component, EXTERNAL, None, endpoint))
        elif source == DOCKER:
            running = docker_backend.container_running(name, component)
            statuses.append(ComponentStatus(component, DOCKER if running else "stopped", None, endpoint))
        else:
            record = processes.read_pid_file(paths.pid_file(component))
            if record is None:
                statuses.append(ComponentStatus(component, "stopped", None, endpoint))
            else:
                state = "running" if record.is_running() else "stale"
                statuses.append(ComponentStatus(component, state, record.pid, endpoint))
    return StackStatus(name=name, root=str(paths.root), components=tuple(statuses))


def stack_endpoints(name: str = DEFAULT_STACK_NAME) -> Endpoints | None:
    """The endpoints the last `up` of the named stack wrote to endpoints.env, or None when it is down."""
    try:
        text = StackPaths.for_stack(name).endpoints_file.read_text()
    except FileNotFoundError:
        return None
    return Endpoints.from_env(parse_env_file(text))
