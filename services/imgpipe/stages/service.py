"""Running one stage as a service: its topics, retry routing, ended-task watcher and readiness."""

from __future__ import annotations

from imgpipe.contracts.payloads import stage_name
from imgpipe.contracts.registry import TopicKey, default_registry
from imgpipe.objects import ObjectStore
from imgpipe.runtime.kafka import build_producer
from imgpipe.runtime.service import routing_from_registry, run_consumer_service
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


def run_stage(settings: StageSettings, work: StageWork) -> int:
    name = stage_name(work.stage)
    registry = default_registry()
    routing = routing_from_registry()
    input_key, next_key = _TOPICS[work.stage]
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
        on_shutdown=[runner.close],
        max_in_flight=settings.stage_max_in_flight,
    )
