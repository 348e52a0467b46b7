"""`imgpipe stack install|up|down|status|env` and `imgpipe doctor`.

The server modules are imported inside the handlers: every `imgpipe` command builds this parser, and
the clients they pull in (boto3, SQLAlchemy, librdkafka) take a second to import.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable

from imgpipe.localstack.errors import LocalStackError
from imgpipe.localstack.layout import DEFAULT_STACK_NAME

STACK_NAME_ENV = "IMGPIPE_STACK_NAME"
HandlerFunction = Callable[[argparse.Namespace], int]


def _configure_logging() -> None:
    # Progress lines on stderr, so stdout stays parseable (`eval "$(imgpipe stack env)"`).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_log = logging.getLogger("imgpipe.localstack")
    if not package_log.handlers:
        package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    logging.getLogger("imgpipe.localstack.librdkafka").setLevel(logging.CRITICAL)


def _install(args: argparse.Namespace) -> int:
    from imgpipe.localstack.install import ensure_installed

    started = time.monotonic()
    installation = ensure_installed()
    print(f"installed in {installation.cache_dir} ({time.monotonic() - started:.1f} s)")
    return 0


def _up(args: argparse.Namespace) -> int:
    from imgpipe.localstack.endpoints import render_exports
    from imgpipe.localstack.stack import start_stack

    started = time.monotonic()
    endpoints = start_stack(args.name)
    print(f"stack {args.name} is up ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    sys.stdout.write(render_exports(endpoints.as_env()))
    return 0


def _down(args: argparse.Namespace) -> int:
    from imgpipe.localstack.stack import stop_stack

    stop_stack(args.name)
    print(f"stack {args.name} is down")
    return 0


def _status(args: argparse.Namespace) -> int:
    from imgpipe.localstack.stack import stack_status

    status = stack_status(args.name)
    if args.json:
        _print_json({**dataclasses.asdict(status), "running": status.running})
        return 0 if status.running else 1
    print(f"stack {status.name} ({status.root})")
    for component in status.components:
        pid = f"pid {component.pid}" if component.pid else ""
        print(f"  {component.component:<9} {component.state:<9} {pid:<11} {component.endpoint or '-'}")
    return 0 if status.running else 1


def _env(args: argparse.Namespace) -> int:
    from imgpipe.localstack.endpoints import render_exports
    from imgpipe.localstack.stack import stack_endpoints

    endpoints = stack_endpoints(args.name)
    if endpoints is None:
        print(f"stack {args.name} is not up: run `imgpipe stack up --name {args.name}`", file=sys.stderr)
        return 1
    sys.stdout.write(render_exports(endpoints.as_env()))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from imgpipe.localstack.doctor import run_doctor

    checks = run_doctor(args.name, os.environ)
    if args.json:
        _print_json(
            {"healthy": all(c.healthy for c in checks), "checks": [dataclasses.asdict(c) for c in checks]}
        )
        return 0 if all(check.healthy for check in checks) else 1
    for check in checks:
        print(check.line())
    return 0 if all(check.healthy for check in checks) else 1


def _pipeline_up(args: argparse.Namespace) -> int:
    from imgpipe.localstack.pipeline import LOOPBACK_NETWORKS, LocalPipeline, egress_overrides

    networks = [n for n in (args.allow_networks, LOOPBACK_NETWORKS if args.allow_loopback else "") if n]
    started = time.monotonic()
    pipeline = LocalPipeline.of_stack(args.name)
    pipeline.up(egress_overrides(",".join(networks)))
    print(f"pipeline on stack {args.name} is up ({time.monotonic() - started:.1f} s); API {pipeline.api_url}")
    print(f"demo tenant's API key is in {pipeline.state_file}; logs in {pipeline.paths.root / 'logs'}")
    return 0


def _pipeline_down(args: argparse.Namespace) -> int:
    from imgpipe.localstack.pipeline import LocalPipeline, PipelineError

    try:
        pipeline = LocalPipeline.of_stack(args.name)
    except PipelineError:
        return 0  # the stack is down, and its services with it
    pipeline.down()
    print(f"pipeline on stack {args.name} is down")
    return 0


def _pipeline_status(args: argparse.Namespace) -> int:
    from imgpipe.localstack.pipeline import LocalPipeline

    status = LocalPipeline.of_stack(args.name).status()
    if args.json:
        _print_json({"ready": all(s == "ready" for s in status.values()), "services": status})
        return 0 if all(state == "ready" for state in status.values()) else 1
    for service, state in status.items():
        print(f"{service:<18} {state}")
    return 0 if all(state == "ready" for state in status.values()) else 1


def _demo(args: argparse.Namespace) -> int:
    from imgpipe.demo import run_demo

    return run_demo(args.name, timeout=args.timeout)


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2))


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (same exit status)")


def _handler(function: HandlerFunction) -> HandlerFunction:
    """Wrap a command: set up progress logging and turn expected failures into one line and exit 1."""

    def run(args: argparse.Namespace) -> int:
        _configure_logging()
        try:
            return function(args)
        except (LocalStackError, ValueError, TimeoutError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return run


def _add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name",
        default=os.environ.get(STACK_NAME_ENV, DEFAULT_STACK_NAME),
        help=f"state in <cache>/stack-<name>/ (default: ${STACK_NAME_ENV} or {DEFAULT_STACK_NAME})",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `stack` (install/up/down/status/env) and `doctor`."""
    stack = subparsers.add_parser("stack", help="the local stack: real Kafka, Postgres and MinIO processes")
    actions = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    commands = {
        "install": (_install, "install the servers into the cache (idempotent, quick when cached)"),
        "up": (_up, "start the stack (a no-op for what runs) and print its endpoints as export lines"),
        "down": (_down, "stop every server of the stack; data is kept"),
        "status": (_status, "show what runs; exit 1 unless everything does"),
        "env": (_env, "print the endpoints as `export IMGPIPE_...=...` lines"),
    }
    for action, (function, help_text) in commands.items():
        parser = actions.add_parser(action, help=help_text, description=help_text)
        if action != "install":
            _add_name(parser)
        if action == "status":
            _add_json(parser)
        parser.set_defaults(handler=_handler(function))
    pipeline = subparsers.add_parser(
        "pipeline", help="imgpipe's own services as processes on the local stack"
    )
    pipeline_actions = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    for action, function, help_text in (
        (
            "up",
            _pipeline_up,
            "migrate, create topics and a demo tenant, start every service, wait until ready",
        ),
        ("down", _pipeline_down, "stop every service (SIGTERM: in-flight work finishes)"),
        ("status", _pipeline_status, "each service's state; exit 1 unless all are ready"),
    ):
        parser = pipeline_actions.add_parser(action, help=help_text, description=help_text)
        _add_name(parser)
        if action == "status":
            _add_json(parser)
        parser.set_defaults(handler=_handler(function))
        if action == "up":
            parser.add_argument(
                "--allow-loopback",
                action="store_true",
                help="let image fetches and callbacks reach this machine (127.0.0.0/8, ::1): local receivers",
            )
            parser.add_argument(
                "--allow-networks",
                default="",
                metavar="CIDRS",
                help="comma-separated private CIDRs image fetches and callbacks may reach "
                "(IMGPIPE_FETCH_ALLOW_NETWORKS and IMGPIPE_CALLBACK_ALLOW_NETWORKS)",
            )
    demo = subparsers.add_parser(
        "demo", help="submit sample photos over HTTP and the submit topic; show results"
    )
    _add_name(demo)
    demo.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the tasks")
    demo.set_defaults(handler=_handler(_demo))

    doctor = subparsers.add_parser("doctor", help="version, endpoint and health of Kafka, Postgres and S3")
    _add_name(doctor)
    _add_json(doctor)
    doctor.set_defaults(handler=_handler(_doctor))
