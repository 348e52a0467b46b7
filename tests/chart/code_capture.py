"""Run a container's command the way its pod would, up to the point where it would start serving, and
record what the code chose: the settings class it loaded (from the chart's env), the consumer group
and topics, the ports it serves, the HTTP app or faust app it built.

Nothing connects anywhere: the serving calls (run_consumer_service, uvicorn.run, faust.Worker,
Health.serve) are replaced by recorders, producers by stand-ins, and the run stops there. Kafka and
S3 addresses are replaced by a closed loopback port, so that a client a constructor starts in the
background (policy readers, terminal-task watchers) neither resolves nor reaches any real host.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from imgpipe.cli import build_parser
from imgpipe.runtime.settings import ENV_PREFIX, RuntimeSettings

CLOSED_PORT = "127.0.0.1:1"
ADDRESSES = {
    "IMGPIPE_KAFKA_BOOTSTRAP_SERVERS": CLOSED_PORT,
    "IMGPIPE_S3_ENDPOINT_URL": f"http://{CLOSED_PORT}",
}
# Those background clients would log every refused connection to stderr: librdkafka's log level 0.
QUIET_KAFKA = {"IMGPIPE_KAFKA_CLIENT_CONFIG": '{"log_level": "0"}'}


class _Stop(Exception):
    """The command reached the point where it would serve."""


@dataclass
class Capture:
    settings_class: type[RuntimeSettings] | None = None
    settings: RuntimeSettings | None = None
    group: str | None = None
    topics: list[str] = field(default_factory=list)
    consumer_config: dict[str, Any] = field(default_factory=dict)
    health_port: int | None = None
    http_app: Any = None
    http_port: int | None = None
    faust_app: Any = None


def subcommands() -> set[str]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return set(action.choices or {})


def _patch_everywhere(stack: contextlib.ExitStack, module_name: str, attr: str, replacement: Any) -> Any:
    """Replace a function in its module and in every loaded imgpipe module that imported it by name."""
    module = importlib.import_module(module_name)
    original = getattr(module, attr)
    for name, loaded in list(sys.modules.items()):
        if (name == "imgpipe" or name.startswith("imgpipe.")) and getattr(loaded, attr, None) is original:
            stack.enter_context(mock.patch.object(loaded, attr, replacement))
    return original


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = {key: value for key, value in os.environ.items() if key.startswith(ENV_PREFIX)}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in [key for key in os.environ if key.startswith(ENV_PREFIX)]:
            del os.environ[key]
        os.environ.update(saved)


def run_until_serving(
    argv: list[str], env: Mapping[str, str], *, stop_after_settings: bool = False
) -> Capture:
    """Parse argv with the real parser and run its handler under `env`; see the module docstring."""
    # Load what the handlers import lazily, so that the patches below reach every copy of a name.
    for name in (
        "imgpipe.runtime.service",
        "imgpipe.stages.service",
        "imgpipe.ingest.wiring",
        "uvicorn",
        "faust",
    ):
        importlib.import_module(name)
    for name in ("imgpipe.callback.commands", "imgpipe.callback.app"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    import faust
    import uvicorn

    from imgpipe.runtime import kafka
    from imgpipe.runtime.health import Health

    captured = Capture()
    args = build_parser().parse_args(argv)
    with contextlib.ExitStack() as stack:
        load_settings: Callable[[type[RuntimeSettings]], RuntimeSettings] = importlib.import_module(
            "imgpipe.runtime.settings"
        ).load_settings

        def recording_load_settings(settings_class: type[RuntimeSettings]) -> RuntimeSettings:
            settings = load_settings(settings_class)
            captured.settings_class, captured.settings = settings_class, settings
            if stop_after_settings:
                raise _Stop
            return settings

        def recording_consumer_service(**kwargs: Any) -> int:
            captured.group, captured.topics = kwargs["group_id"], list(kwargs["topics"])
            captured.settings = kwargs["settings"]
            captured.health_port = kwargs["settings"].health_port
            raise _Stop

        def recording_uvicorn_run(app: Any, host: str, port: int, **_: Any) -> None:
            captured.http_app, captured.http_port = app, port
            raise _Stop

        def recording_health_serve(self: Health, host: str, port: int) -> int:
            captured.health_port = port
            return port

        class RecordingWorker:
            def __init__(self, app: Any, **_: Any) -> None:
                captured.faust_app = app
                raise _Stop

        _patch_everywhere(stack, "imgpipe.runtime.settings", "load_settings", recording_load_settings)
        _patch_everywhere(
            stack, "imgpipe.runtime.service", "run_consumer_service", recording_consumer_service
        )
        _patch_everywhere(stack, "imgpipe.runtime.kafka", "build_producer", lambda *a, **k: mock.MagicMock())
        stack.enter_context(mock.patch.object(uvicorn, "run", recording_uvicorn_run))
        stack.enter_context(mock.patch.object(Health, "serve", recording_health_serve))
        stack.enter_context(mock.patch.object(faust, "Worker", RecordingWorker))
        # The API's outbox relay thread would start before uvicorn.run: give it nothing to do.
        wiring = importlib.import_module("imgpipe.ingest.wiring")
        stack.enter_context(
            mock.patch.object(wiring.IngestCore, "outbox_relay", lambda self: lambda stop: None)
        )
        addresses = {key: value for key, value in ADDRESSES.items() if key in env}
        stack.enter_context(_environment({**env, **addresses, **QUIET_KAFKA}))
        with contextlib.suppress(_Stop):
            args.handler(args)

    if captured.group is not None and captured.settings is not None:
        # What a consumer of this group is configured with (auto.offset.reset for KEDA's policy).
        with mock.patch.object(kafka, "Consumer", lambda config: config):
            consumer: Any = kafka.build_consumer(captured.settings, captured.group, client_id="contract-test")
        captured.consumer_config = dict(consumer)
    return captured
