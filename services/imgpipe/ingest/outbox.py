"""Transactional outbox: a task row and the Kafka message announcing it commit together.

`enqueue` adds the message to the caller's transaction (and a NOTIFY, delivered on commit). The
relay publishes pending rows in id order, waits for the broker's acknowledgement, then deletes
them, all in one transaction holding the rows with SKIP LOCKED, so several relays share the work
and a relay dying mid-way leaves its rows to be published again (at least once, never lost).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import psycopg
from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter
from sqlalchemy import delete, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from imgpipe.store.models import OutboxMessage

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "imgpipe_outbox"
PUBLISHED = Counter("imgpipe_outbox_published_total", "Outbox messages published to Kafka", ["topic"])


def enqueue(
    session: Session, topic: str, key: str | None, value: bytes, headers: Mapping[str, str] | None = None
) -> None:
    session.add(OutboxMessage(topic=topic, key=key, value=value, headers=dict(headers or {})))
    session.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


class OutboxRelay:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        producer: Producer,
        database_url: str,
        batch_size: int = 500,
        idle_seconds: float = 0.2,
        flush_seconds: float = 30.0,
    ) -> None:
        self._sessions = sessions
        self._producer = producer
        self._conninfo = (
            make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self._batch_size = batch_size
        self._idle_seconds = idle_seconds
        self._flush_seconds = flush_seconds

    def publish_pending(self) -> int:
        """Publish one batch of pending rows; returns how many were published and deleted."""
        errors: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(error)

        with self._sessions.begin() as session:
            rows = session.scalars(
                select(OutboxMessage)
                .order_by(OutboxMessage.id)
                .limit(self._batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0
            for row in rows:
                self._producer.produce(
                    row.topic,
                    value=row.value,
                    key=row.key,
                    headers=list(row.headers.items()),
                    on_delivery=on_delivery,
                )
            undelivered = self._producer.flush(self._flush_seconds)
            if undelivered or errors:
                # Raising rolls back: the rows stay and are published again (duplicates are fine).
                raise RuntimeError(f"outbox publish not acknowledged: {undelivered} queued, errors {errors}")
            session.execute(delete(OutboxMessage).where(OutboxMessage.id.in_([row.id for row in rows])))
        for row in rows:
            PUBLISHED.labels(row.topic).inc()
        return len(rows)

    def run(self, stop: threading.Event) -> None:
        """Publish until `stop`, woken by NOTIFY from committing writers or every idle period."""
        while not stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as listener:
                    listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not stop.is_set():
                        while self.publish_pending() == self._batch_size:
                            pass  # a full batch: more are likely waiting
                        # Returns at the first NOTIFY or after the idle period.
                        for _ in listener.notifies(timeout=self._idle_seconds, stop_after=1):
                            pass
            except Exception:
                log.exception("outbox relay failed; retrying")
                stop.wait(1.0)
