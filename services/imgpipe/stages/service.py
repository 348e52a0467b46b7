"""Running one stage as a service: its topics, retry routing, ended-task watcher and readiness."""

from __future__ import annotations

from collections.abc import Callable

from imgpipe.contracts.payloads import stage_name
from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.objects import ObjectStore
from imgpipe.runtime.kafka import build_producer
from imgpipe.runtime.service import routing_from_registry, run_consumer_service
from imgpipe.stages.pool import PooledWork, WorkFactory, resolve_workers
from imgpipe.stages.runner import StageRunner, StageTopics, StageWork
from imgpipe.stages.settings import StageSettings
from imgpipe.stages.terminal import TerminalTasks
from imgpipe.v1 import task_pb2

# Each stage's input topic and the topic its output goes to (None: the result topic).
_TOPICS: dict[task_pb2.Stage.ValueType, tuple[TopicKey, TopicKey | None]] = {
    task_pb2.STAGE_DETECT: (TopicKey.DETECT, TopicKey.GENERATE),
    task_pb2.STAGE_GENERATE: (TopicKey.GENERATE, TopicKey.MATTE),
    task_pb2.STAGE_MATTE: (TopicKey.MATTE, None),
}


def _backend(settings: StageSettings, stage: task_pb2.Stage.ValueType) -> str:
    return {
        task_pb2.STAGE_DETECT: settings.detect_backend,
        task_pb2.STAGE_GENERATE: settings.generate_backend,
        task_pb2.STAGE_MATTE: settings.matte_backend,
    }[stage]


def run_stage(settings: StageSettings, stage: task_pb2.Stage.ValueType, factory: WorkFactory) -> int:
    """Run one stage until SIGTERM. Its own backend "local" (CPU-bound) with more than one worker:
    the work runs in a process pool and the loop keeps at least a message per worker in flight;
    otherwise it runs in process, `stage_max_in_flight` calls at once (threads, for HTTP backends)."""
    name = stage_name(stage)
    registry = default_registry()
    routing = routing_from_registry()
    input_key, next_key = _TOPICS[stage]
    workers = resolve_workers(settings.stage_workers) if _backend(settings, stage) == "local" else 1
    work: StageWork
    shutdown: list[Callable[[], None]] = []
    max_in_flight = settings.stage_max_in_flight
    if workers > 1:
        pool = PooledWork(stage, factory, settings, workers)
        work, max_in_flight = pool, max(max_in_flight, workers)
        shutdown.append(pool.close)
    else:
        work = factory(settings)
    objects = ObjectStore(settings)
    terminal = TerminalTasks(settings, registry.name(TopicKey.RESULT), settings.terminal_lookback_seconds)
    runner = StageRunner(
        work,
        objects,
        StageTopics(
            next_stage=registry.name(next_key) if next_key else None,
            events=registry.name(TopicKey.EVENTS),
            result=registry.name(TopicKey.RESULT),
        ),
        progress_producer=build_producer(settings, client_id=f"{settings.service_name}-progress"),
        has_ended=terminal.has_ended,
        max_attempts=len(routing.retry_tiers) + 1,
    )
    return run_consumer_service(
        settings=settings,
        group_id=f"imgpipe.{name}",
        topics=[registry.name(input_key)],
        handler=runner.handle,
        routing=routing,
        readiness_checks={
            "ended_tasks_loaded": terminal.is_caught_up,
            "object_store": objects.is_reachable,
        },
        background=[terminal.run],
        # The loop has drained what was in flight before these run: the pool has nothing left to do.
        on_shutdown=[runner.close, *shutdown],
        max_in_flight=max_in_flight,
    )
