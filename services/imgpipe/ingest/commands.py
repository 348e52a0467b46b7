"""`imgpipe ingest-api|ingest-submit|ingest-projector`, `imgpipe db upgrade`, `imgpipe tenants create`,
`imgpipe openapi`.

Imports happen inside the handlers so that building the parser stays fast for every command.
"""

from __future__ import annotations

import argparse
import threading

from imgpipe.runtime.settings import load_settings


def _ingest_api(args: argparse.Namespace) -> int:
    import uvicorn

    from imgpipe.ingest.api import ApiDependencies, create_app
    from imgpipe.ingest.settings import IngestSettings
    from imgpipe.ingest.tenants import ApiKeyAuthenticator
    from imgpipe.ingest.wiring import IngestCore
    from imgpipe.ratelimit import KeyedLimiter
    from imgpipe.runtime.logs import configure_logging
    from imgpipe.runtime.telemetry import configure_tracing, instrument_fastapi

    settings = load_settings(IngestSettings)
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    configure_tracing(settings.service_name, settings.trace_exporter, settings.trace_file)
    core = IngestCore.from_settings(settings)
    app = create_app(
        ApiDependencies(
            settings=settings,
            sessions=core.sessions,
            objects=core.objects,
            acceptor=core.acceptor,
            authenticator=ApiKeyAuthenticator(core.sessions, settings.api_key_cache_seconds),
            limiter=KeyedLimiter(),
            result_topic=core.result_topic,
            callback_admin=core.callback_admin() if settings.admin_token_value() else None,
            dead_letters=core.dead_letters() if settings.admin_token_value() else None,
        )
    )
    instrument_fastapi(app)
    stop_relay = threading.Event()
    relay = threading.Thread(target=core.outbox_relay(), args=(stop_relay,), name="outbox-relay", daemon=True)
    relay.start()
    try:
        # uvicorn handles SIGTERM: it stops accepting, finishes in-flight requests, then returns.
        uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_config=None, access_log=False)
    finally:
        stop_relay.set()
        relay.join(timeout=10)
    return 0


def _ingest_submit(args: argparse.Namespace) -> int:
    from imgpipe.contracts.registry import TopicKey
    from imgpipe.ingest.settings import IngestSettings
    from imgpipe.ingest.submit import SubmitConsumer
    from imgpipe.ingest.wiring import IngestCore
    from imgpipe.runtime.service import run_consumer_service

    settings = load_settings(IngestSettings)
    core = IngestCore.from_settings(settings)
    consumer = SubmitConsumer(core.acceptor, core.registry.topic(TopicKey.SUBMIT))
    return run_consumer_service(
        settings=settings,
        group_id="imgpipe.ingest",
        topics=consumer.topics,
        handler=consumer.handle,
        background=[core.outbox_relay()],
    )


def _ingest_projector(args: argparse.Namespace) -> int:
    from imgpipe.ingest.projector import Projector
    from imgpipe.ingest.settings import IngestSettings
    from imgpipe.ingest.wiring import IngestCore
    from imgpipe.runtime.service import run_consumer_service

    settings = load_settings(IngestSettings)
    core = IngestCore.from_settings(settings)
    projector = Projector(core.sessions, core.registry)
    return run_consumer_service(
        settings=settings,
        group_id="imgpipe.ingest.projector",
        topics=projector.topics,
        handler=projector.handle,
        before_commit=projector.write_batch,
        # Results the reaper writes leave through the outbox, so this process relays too.
        background=[core.reaper(), core.outbox_relay()],
    )


def _db_upgrade(args: argparse.Namespace) -> int:
    from imgpipe.runtime.settings import RuntimeSettings
    from imgpipe.store.db import upgrade

    upgrade(load_settings(RuntimeSettings).database_url, args.revision)
    print(f"database at {args.revision}")
    return 0


def _tenants_create(args: argparse.Namespace) -> int:
    from imgpipe.ingest.tenants import create_tenant
    from imgpipe.runtime.settings import RuntimeSettings
    from imgpipe.store.db import make_engine, make_sessions

    sessions = make_sessions(make_engine(load_settings(RuntimeSettings).database_url, pool_size=1))
    with sessions.begin() as session:
        api_key = create_tenant(
            session,
            args.id,
            args.name or args.id,
            rate_per_second=args.rate,
            burst=args.burst,
            batch_rate_per_second=args.batch_rate,
            batch_burst=args.batch_burst,
        )
    print(api_key)
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from imgpipe.ingest.openapi import openapi_command

    return openapi_command(args)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subparsers.add_parser("ingest-api", help="the HTTP API (and its outbox relay)").set_defaults(
        handler=_ingest_api
    )
    subparsers.add_parser("ingest-submit", help="consume the submit topic").set_defaults(
        handler=_ingest_submit
    )
    subparsers.add_parser(
        "ingest-projector", help="project stage events and results into Postgres; reap overdue tasks"
    ).set_defaults(handler=_ingest_projector)

    db = subparsers.add_parser("db", help="task store schema").add_subparsers(required=True, metavar="ACTION")
    db_upgrade = db.add_parser("upgrade", help="apply Alembic migrations")
    db_upgrade.add_argument("revision", nargs="?", default="head")
    db_upgrade.set_defaults(handler=_db_upgrade)

    tenants = subparsers.add_parser("tenants", help="API tenants").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = tenants.add_parser("create", help="create or update a tenant and print a new API key")
    create.add_argument("id")
    create.add_argument("--name")
    create.add_argument("--rate", type=float, default=10.0, help="submits per second")
    create.add_argument("--burst", type=int, default=20)
    create.add_argument("--batch-rate", type=float, default=1.0, help="batch submits per second")
    create.add_argument("--batch-burst", type=int, default=2)
    create.set_defaults(handler=_tenants_create)

    openapi = subparsers.add_parser("openapi", help="write (or --check) schemas/openapi.json")
    openapi.add_argument("--check", action="store_true", help="exit 1 when the committed file is stale")
    openapi.add_argument("--output", help="another path than schemas/openapi.json")
    openapi.set_defaults(handler=_openapi)
