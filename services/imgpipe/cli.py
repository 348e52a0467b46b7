"""The `imgpipe` console script: one entry point whose subcommands start each service and tool.

Each feature module exposes `register(subparsers)`, adding its subcommands with a `handler`
default that receives the parsed arguments and returns the process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from imgpipe.callback import commands as callback_commands
from imgpipe.contracts import commands as contract_commands
from imgpipe.ingest import commands as ingest_commands
from imgpipe.localstack import commands as stack_commands
from imgpipe.modelserver import server as model_server
from imgpipe.runtime import commands as runtime_commands
from imgpipe.runtime.settings import SettingsError
from imgpipe.stages import commands as stage_commands

DISTRIBUTION = "imgpipe"  # pyproject.toml's [project] name

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

REGISTRARS: tuple[Registrar, ...] = (
    stack_commands.register,
    contract_commands.register,
    ingest_commands.register,
    stage_commands.register,
    callback_commands.register,
    runtime_commands.register,
    model_server.register,
)


def version() -> str:
    """The installed distribution's version (the wheel in the image, the editable install here)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgpipe", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except SettingsError as exc:
        print(f"imgpipe {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
