"""Building ingest's collaborators from settings, shared by its three process kinds."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.contracts.registry import Registry, TopicKey, default_registry
from imgpipe.ingest.accept import TaskAcceptor
from imgpipe.ingest.callback_admin import CallbackAdmin
from imgpipe.ingest.outbox import OutboxRelay
from imgpipe.ingest.settings import IngestSettings
from imgpipe.ingest.terminate import run_reaper
from imgpipe.objects import ObjectStore
from imgpipe.runtime.deadletters import DeadLetters
from imgpipe.runtime.kafka import build_producer
from imgpipe.store.db import make_engine, make_sessions


@dataclass(frozen=True)
class IngestCore:
    settings: IngestSettings
    registry: Registry
    engine: Engine
    sessions: sessionmaker[Session]
    objects: ObjectStore
    acceptor: TaskAcceptor

    @classmethod
    def from_settings(cls, settings: IngestSettings) -> IngestCore:
        registry = default_registry()
        engine = make_engine(settings.database_url)
        sessions = make_sessions(engine)
        objects = ObjectStore(settings, presign_endpoint_url=settings.s3_public_endpoint_url)
        acceptor = TaskAcceptor(
            sessions,
            objects,
            registry,
            time_limit_seconds=settings.task_time_limit_seconds,
            max_inline_image_bytes=settings.max_inline_image_bytes,
        )
        return cls(settings, registry, engine, sessions, objects, acceptor)

    @property
    def result_topic(self) -> str:
        return self.registry.name(TopicKey.RESULT)

    def outbox_relay(self) -> Callable[[threading.Event], None]:
        relay = OutboxRelay(
            self.sessions,
            build_producer(self.settings, client_id=f"{self.settings.service_name}-outbox"),
            self.settings.database_url,
            batch_size=self.settings.outbox_batch_size,
            idle_seconds=self.settings.outbox_idle_seconds,
            flush_seconds=self.settings.producer_flush_seconds,
        )
        return relay.run

    def reaper(self) -> Callable[[threading.Event], None]:
        return functools.partial(
            run_reaper, self.sessions, self.result_topic, self.settings.reaper_interval_seconds
        )

    def callback_admin(self) -> CallbackAdmin:
        """Policies and replays for the admin API, with a producer of its own."""
        return CallbackAdmin(
            self.settings,
            self.registry,
            self.sessions,
            build_producer(self.settings, client_id=f"{self.settings.service_name}-admin"),
            replay_limit=self.settings.admin_replay_limit,
            timeout_seconds=min(self.settings.producer_flush_seconds, 15.0),
        )

    def dead_letters(self) -> DeadLetters:
        """The dead-letter topic for the admin API (reads, and replays with a producer of its own)."""
        return DeadLetters(
            self.settings, self.registry, timeout_seconds=min(self.settings.producer_flush_seconds, 15.0)
        )
