"""`imgpipe callback`: the faust worker that delivers callbacks."""

from __future__ import annotations

import argparse
import threading

from imgpipe.runtime.settings import load_settings


def _callback(args: argparse.Namespace) -> int:
    import faust

    from imgpipe.callback.app import build_app
    from imgpipe.callback.settings import CallbackSettings
    from imgpipe.contracts.registry import default_registry
    from imgpipe.runtime.health import Health
    from imgpipe.runtime.logs import configure_logging
    from imgpipe.runtime.telemetry import configure_tracing

    settings = load_settings(CallbackSettings)
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    configure_tracing(settings.service_name, settings.trace_exporter, settings.trace_file)
    app, service = build_app(settings, default_registry())
    health = Health(settings.liveness_stale_seconds)
    health.add_readiness_check("tables_recovered", lambda: service.ready)
    health.add_readiness_check("policies_loaded", service.policies.is_caught_up)
    service.heartbeat = health.beat
    stop_policies = threading.Event()
    threading.Thread(target=service.policies.run, args=(stop_policies,), name="policies", daemon=True).start()
    health.serve(settings.health_host, settings.health_port)
    # faust's worker runs the event loop, handles SIGTERM (stop consuming, flush, commit) and exits.
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        stop_policies.set()
        health.close()
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subparsers.add_parser(
        "callback", help="deliver callbacks (faust app; per-URL queues in tables)"
    ).set_defaults(handler=_callback)
