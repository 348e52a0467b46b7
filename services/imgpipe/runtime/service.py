"""Start-up and shutdown shared by every Kafka-consuming service.

A service file supplies its settings, group, topics and handler; this module wires logging, the
health server, the producer, the consume loop and signal handling around them.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.runtime.consumer import ConsumeLoop, FailureRouting, Handler, RetryTier
from imgpipe.runtime.health import Health, ReadinessCheck
from imgpipe.runtime.kafka import build_producer
from imgpipe.runtime.logs import configure_logging
from imgpipe.runtime.settings import RuntimeSettings
from imgpipe.runtime.telemetry import configure_tracing

log = logging.getLogger(__name__)


def run_consumer_service(
    *,
    settings: RuntimeSettings,
    group_id: str,
    topics: Sequence[str],
    handler: Handler,
    routing: FailureRouting | None = None,
    readiness_checks: Mapping[str, ReadinessCheck] | None = None,
    before_commit: Callable[[], None] | None = None,
    background: Sequence[Callable[[threading.Event], None]] = (),
    on_shutdown: Sequence[Callable[[], None]] = (),
    max_in_flight: int = 1,
) -> int:
    """Run until SIGTERM or SIGINT, then finish the messages in hand and leave the group."""
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    configure_tracing(settings.service_name, settings.trace_exporter, settings.trace_file)
    if routing is None:
        routing = routing_from_registry()
    health = Health(settings.liveness_stale_seconds)
    producer = build_producer(settings, client_id=settings.service_name)
    loop = ConsumeLoop(
        settings=settings,
        group_id=group_id,
        topics=topics,
        handler=handler,
        producer=producer,
        routing=routing,
        health=health,
        before_commit=before_commit,
        max_in_flight=max_in_flight,
    )
    health.add_readiness_check("kafka_group_joined", loop.has_joined)
    for name, check in (readiness_checks or {}).items():
        health.add_readiness_check(name, check)
    port = health.serve(settings.health_host, settings.health_port)
    log.info("health server on port %d", port)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, finishing in-flight work", signal.Signals(signum).name)
        loop.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # Side duties of the process (outbox relay, reaper) run in threads until the loop ends.
    stop_background = threading.Event()
    threads = [threading.Thread(target=task, args=(stop_background,), daemon=True) for task in background]
    for thread in threads:
        thread.start()
    try:
        loop.run()
    finally:
        stop_background.set()
        for thread in threads:
            thread.join(timeout=10)
        for shutdown in on_shutdown:
            shutdown()
        health.close()
    return 0


def routing_from_registry() -> FailureRouting:
    """The product's retry tiers and dead-letter topic, as the topic registry declares them."""
    registry = default_registry()
    return FailureRouting(
        retry_tiers=tuple(
            RetryTier(spec.name, spec.retry_delay_seconds or 0.0) for spec in registry.retry_tiers()
        ),
        dead_letter_topic=registry.name(TopicKey.DEAD_LETTER),
    )
