"""Running the model server: `python -m imgpipe.modelserver`, or `imgpipe model-server` once cli.py
registers `register` below.

    python -m imgpipe.modelserver --host 127.0.0.1 --port 8090
    python -m imgpipe.modelserver --simulate --service-time 0.25 --slots 4   # a simulated accelerator

The default port matches the stages' default `IMGPIPE_{DETECT,GENERATE,MATTE}_URL`
(http://127.0.0.1:8090), and the default OIP model name their `IMGPIPE_DETECT_MODEL`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Final

DEFAULT_PORT: Final = 8090
API_KEY_ENV: Final = "IMGPIPE_MODEL_SERVER_API_KEY"
DEFAULT_DETECT_MODEL: Final = "pet-detector"  # StageSettings.detect_model's default
# The simulated accelerator's defaults (modelserver/simulated.py): 4 calls at once, 250 ms each.
DEFAULT_SERVICE_TIME: Final = 0.25
DEFAULT_SLOTS: Final = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default: %(default)s)")
    parser.add_argument(
        "--detect-model",
        default=DEFAULT_DETECT_MODEL,
        help="model name served over the Open Inference Protocol (default: %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' on /v1/images/edits (default: ${API_KEY_ENV}, else none)",
    )
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="a simulated accelerator: each call waits --service-time in one of --slots, no model work",
    )
    parser.add_argument(
        "--service-time",
        type=float,
        default=DEFAULT_SERVICE_TIME,
        help="seconds one simulated call takes (default: %(default)s)",
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=DEFAULT_SLOTS,
        help="simulated calls served at once per model; more queue (default: %(default)s)",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--log-format", default="text", choices=("text", "json"))


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (uvicorn finishes in-flight requests first); the exit code."""
    import uvicorn

    from imgpipe.modelserver.app import create_app
    from imgpipe.modelserver.simulated import Simulation
    from imgpipe.runtime.logs import configure_logging

    configure_logging("model-server", args.log_level, args.log_format)
    simulation = Simulation(args.service_time, args.slots) if args.simulate else None
    app = create_app(detect_model=args.detect_model, api_key=args.api_key, simulation=simulation)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `model-server` to the `imgpipe` command (cli.py's registrar convention)."""
    parser = subparsers.add_parser(
        "model-server",
        help="serve the CPU backends over OIP v2, the OpenAI images API and rembg's API",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imgpipe.modelserver", description="Serve the CPU backends over HTTP."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
