"""The pipeline's own services as local processes on a running stack: what `make up` starts.

Each service is the `imgpipe` console script with one subcommand, started in its own session with
the stack's endpoints in its environment, logging to <stack>/logs/<service>.log and tracked by a pid
file like the stack's servers. Ports and the demo tenant's API key are kept in <stack>/pipeline.json,
so `imgpipe demo`, `imgpipe pipeline status` and tests find them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from imgpipe.localstack.endpoints import Endpoints
from imgpipe.localstack.errors import LocalStackError
from imgpipe.localstack.layout import StackPaths, file_lock
from imgpipe.localstack.ports import assign_ports
from imgpipe.localstack.processes import PidRecord, ProcessSpec, read_pid_file, spawn, stop
from imgpipe.localstack.stack import stack_endpoints
from imgpipe.localstack.waiting import wait_until
from imgpipe.netguard import EgressPolicy

log = logging.getLogger(__name__)

# The subcommands `make up` runs, in start order (the API last: it is what clients wait for).
SERVICES = ("ingest-projector", "ingest-submit", "detect", "generate", "matte", "callback", "ingest-api")
# The ones that open the task store, so start only after the migration; the stages and the callback
# service need Kafka's topics alone.
STORE_SERVICES = frozenset({"ingest-projector", "ingest-submit", "ingest-api"})
DEMO_TENANT = "demo"
READY_TIMEOUT = 90.0
READY_POLL_SECONDS = 0.1
STOP_GRACE = 20.0
# What `pipeline up --allow-loopback` (`make up`'s default) lets the SSRF guard reach: a receiver or
# an image host on this machine. Production keeps both lists empty (docs/egress.md).
LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"
EGRESS_SETTINGS = ("IMGPIPE_FETCH_ALLOW_NETWORKS", "IMGPIPE_CALLBACK_ALLOW_NETWORKS")


def egress_overrides(allow_networks: str) -> dict[str, str]:
    """Settings letting the detect stage's image fetch and the callback service reach `allow_networks`."""
    return {name: allow_networks for name in EGRESS_SETTINGS} if allow_networks else {}


class PipelineError(LocalStackError):
    pass


@dataclass(frozen=True)
class PipelineState:
    """What <stack>/pipeline.json remembers between commands."""

    ports: dict[str, int]  # service -> port of its health server (the API's own port for ingest-api)
    api_key: str | None = None
    signing_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))  # webhook master key
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # ingest's admin API
    overrides: dict[str, str] = field(default_factory=dict)  # IMGPIPE_* settings `up` was given

    @classmethod
    def load(cls, path: Path) -> PipelineState:
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return cls(ports={})
        return cls(
            ports={k: int(v) for k, v in data.get("ports", {}).items()},
            api_key=data.get("api_key"),
            signing_key=data.get("signing_key") or secrets.token_urlsafe(32),
            admin_token=data.get("admin_token") or secrets.token_urlsafe(24),
            overrides=dict(data.get("overrides", {})),
        )

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        tmp.chmod(0o600)  # holds an API key
        tmp.replace(path)


@dataclass
class LocalPipeline:
    """The services of one named stack: start, stop, kill and check them."""

    stack_name: str
    endpoints: Endpoints
    paths: StackPaths = field(init=False)
    state: PipelineState = field(init=False)

    def __post_init__(self) -> None:
        self.paths = StackPaths.for_stack(self.stack_name)
        self.state = PipelineState.load(self.state_file)

    @classmethod
    def of_stack(cls, stack_name: str) -> LocalPipeline:
        endpoints = stack_endpoints(stack_name)
        if endpoints is None:
            raise PipelineError(f"stack {stack_name} is not up: run `imgpipe stack up --name {stack_name}`")
        return cls(stack_name, endpoints)

    @property
    def state_file(self) -> Path:
        return self.paths.root / "pipeline.json"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.state.ports['ingest-api']}"

    @property
    def api_key(self) -> str:
        if self.state.api_key is None:
            raise PipelineError("the pipeline has no demo tenant yet: run `imgpipe pipeline up`")
        return self.state.api_key

    def callbacks_reach_loopback(self) -> bool:
        """Whether the callback service was started allowed to call 127.0.0.1 (a local receiver)."""
        allowed = self.state.overrides.get("IMGPIPE_CALLBACK_ALLOW_NETWORKS", "")
        return EgressPolicy.from_settings(allow_networks=allowed).address_allowed(ip_address("127.0.0.1"))

    def trace_file(self, service: str) -> Path:
        """Where `service` appends its spans when the pipeline runs with IMGPIPE_TRACE_EXPORTER=file."""
        return self.paths.component_dir("traces") / f"{service}.jsonl"

    def environment(self, service: str) -> dict[str, str]:
        """The environment a service runs with: the stack's endpoints and its own ports."""
        port = str(self.state.ports[service])
        env = {
            **self.endpoints.as_env(),
            "IMGPIPE_SERVICE_NAME": service,
            # Used only under IMGPIPE_TRACE_EXPORTER=file (an override): a file per service.
            "IMGPIPE_TRACE_FILE": str(self.trace_file(service)),
            "IMGPIPE_S3_PUBLIC_ENDPOINT_URL": self.endpoints.s3_endpoint_url,
            "IMGPIPE_WEBHOOK_SIGNING_KEYS": self.state.signing_key,
            "IMGPIPE_CALLBACK_DATA_DIR": str(self.paths.component_dir("callback")),
        }
        if service == "ingest-api":
            env.update(
                {
                    "IMGPIPE_API_HOST": "127.0.0.1",
                    "IMGPIPE_API_PORT": port,
                    "IMGPIPE_ADMIN_TOKEN": self.state.admin_token,
                }
            )
        else:
            env.update({"IMGPIPE_HEALTH_HOST": "127.0.0.1", "IMGPIPE_HEALTH_PORT": port})
        return env

    # -- whole pipeline ----------------------------------------------------------------------

    def up(self, overrides: Mapping[str, str] | None = None) -> None:
        """Migrate, create topics and the demo tenant, then start every service that is not running
        and wait until all are ready. `overrides` adds IMGPIPE_* settings to every service, also when
        one is restarted later."""
        with file_lock(self.paths.root.with_name(f"stack-{self.stack_name}-pipeline.lock")):
            overrides = dict(overrides or {})
            if overrides != self.state.overrides:
                # A service keeps the settings it started with: restart what runs on the old ones.
                for service in reversed(SERVICES):
                    self.stop(service)
            ports = assign_ports(SERVICES, self.state.ports, keep=[s for s in SERVICES if self.is_running(s)])
            self._save(ports=ports, overrides=overrides)
            # The migration and the topics go at once (one waits on Postgres, the other on Kafka), and
            # the services that need only the topics start while the migration runs: their imports,
            # not these steps, are most of a start.
            migration = None if self._schema_is_current() else self._imgpipe_start("db", "upgrade")
            try:
                self._imgpipe_start("topics", "apply").wait().check()
            except BaseException:
                if migration is not None:
                    migration.wait()
                raise
            self._start_stopped([s for s in SERVICES if s not in STORE_SERVICES])
            if migration is not None:
                migration.wait().check()
            if self.state.api_key is None:
                key = self._imgpipe("tenants", "create", DEMO_TENANT, "--rate", "200", "--burst", "400")
                self._save(api_key=key.strip())
            self._start_stopped([s for s in SERVICES if s in STORE_SERVICES])
            for service in SERVICES:
                self.wait_ready(service)

    def down(self) -> None:
        for service in reversed(SERVICES):
            self.stop(service)

    def status(self) -> dict[str, str]:
        return {
            service: ("ready" if self.is_ready(service) else "starting")
            if self.is_running(service)
            else "stopped"
            for service in SERVICES
        }

    # -- one service -------------------------------------------------------------------------

    def start(self, service: str, settings: Mapping[str, str] | None = None, *, wait: bool = True) -> None:
        """Start one service; `settings` (IMGPIPE_* variables) apply to this start only."""
        argv = (sys.executable, "-m", "imgpipe.cli", service)
        env = {**self.environment(service), **self.state.overrides, **(settings or {})}
        spec = ProcessSpec(argv=argv, env=env)
        spawn(spec, self.paths.log_file(service), self.paths.pid_file(service))
        log.info("started %s", service)
        if wait:
            self.wait_ready(service)

    def stop(self, service: str, stop_signal: signal.Signals = signal.SIGTERM) -> None:
        record = self._record(service)
        if record is not None:
            stop(record, stop_signal, STOP_GRACE, service)
            self.paths.pid_file(service).unlink(missing_ok=True)

    def kill(self, service: str) -> None:
        """kill -9, as a crash would: no shutdown code runs."""
        self.stop(service, signal.SIGKILL)

    def is_running(self, service: str) -> bool:
        record = self._record(service)
        return record is not None and record.is_running()

    def is_ready(self, service: str) -> bool:
        port = self.state.ports.get(service)
        if port is None:
            return False
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self, service: str) -> list[Sample]:
        """The samples a running service exports on /metrics now."""
        text = httpx.get(f"http://127.0.0.1:{self.state.ports[service]}/metrics", timeout=10).text
        return [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def wait_ready(self, service: str, timeout: float = READY_TIMEOUT) -> None:
        def ready_or_dead() -> bool:
            if not self.is_running(service):
                raise PipelineError(f"{service} exited during start-up:\n{self.log_tail(service)}")
            return self.is_ready(service)

        try:
            # At most 0.1 s between polls: a service is ready a few seconds after it starts, and
            # the default's 0.5 s cap added up to half a second to each start `up` waits for.
            wait_until(ready_or_dead, timeout, f"{service} to be ready", max_interval=READY_POLL_SECONDS)
        except TimeoutError as exc:
            raise PipelineError(f"{exc}\n{self.log_tail(service)}") from None

    def log_tail(self, service: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.paths.log_file(service).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _save(self, **changes: Any) -> None:
        self.state = dataclasses.replace(self.state, **changes)
        self.state.save(self.state_file)

    def _record(self, service: str) -> PidRecord | None:
        return read_pid_file(self.paths.pid_file(service))

    def _schema_is_current(self) -> bool:
        """Whether the task store is at the migrations' one head already: then `up` skips `db upgrade`
        (its subprocess imports alembic and SQLAlchemy: ~2 s of CPU, on the path of every warm start)."""
        import psycopg

        from imgpipe.store.db import migration_heads

        heads = migration_heads()
        if len(heads) != 1:
            return False
        # psycopg takes the SQLAlchemy URL without its driver suffix (libpq's URI syntax).
        url = self.endpoints.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        try:
            with psycopg.connect(url, connect_timeout=5) as connection:
                rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        except psycopg.Error:
            return False  # no database or no alembic_version table yet: the upgrade creates them
        return {row[0] for row in rows} == heads

    def _start_stopped(self, services: list[str]) -> None:
        for service in services:
            if not self.is_running(service):
                self.start(service, wait=False)

    def _imgpipe(self, *args: str) -> str:
        return self._imgpipe_start(*args).wait().check().stdout

    def _imgpipe_start(self, *args: str) -> _Imgpipe:
        """Start `imgpipe ARGS` on this stack's endpoints; `.wait()` for its output."""
        env = {**os.environ, **self.endpoints.as_env()}
        process = subprocess.Popen(
            [sys.executable, "-m", "imgpipe.cli", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return _Imgpipe(args, process)


@dataclass
class _Imgpipe:
    """One `imgpipe` subcommand the pipeline runs to prepare the stack (migrate, topics, tenant)."""

    args: tuple[str, ...]
    process: subprocess.Popen[str]
    stdout: str = ""
    stderr: str = ""

    def wait(self) -> _Imgpipe:
        self.stdout, self.stderr = self.process.communicate()
        return self

    def check(self) -> _Imgpipe:
        if self.process.returncode != 0:
            raise PipelineError(f"imgpipe {' '.join(self.args)} failed:\n{self.stderr[-2000:]}")
        return self
