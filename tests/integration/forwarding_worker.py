"""A service built on the shared runtime, for tests that signal or kill a real process.

It forwards every message of WORKER_IN_TOPIC to WORKER_OUT_TOPIC. A value starting with b"poison"
is a poison message. A value starting with b"block" makes the handler announce itself (a file
`started-<value>` in WORKER_MARKER_DIR) and then wait for the file `release` there, so a test can
act while the handler is provably mid-work. WORKER_MAX_IN_FLIGHT (default 1) handler calls run at once.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from imgpipe.runtime.consumer import FailureRouting, RetryTier
from imgpipe.runtime.errors import PoisonMessage
from imgpipe.runtime.kafka import Forward, Record
from imgpipe.runtime.service import run_consumer_service
from imgpipe.runtime.settings import RuntimeSettings, load_settings

MARKERS = Path(os.environ["WORKER_MARKER_DIR"])
OUT_TOPIC = os.environ["WORKER_OUT_TOPIC"]


def handle(record: Record) -> list[Forward]:
    value = record.value or b""
    if value.startswith(b"poison"):
        raise PoisonMessage("test poison")
    if value.startswith(b"block"):
        (MARKERS / f"started-{value.decode()}").touch()
        deadline = time.monotonic() + 120
        while not (MARKERS / "release").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("never released")
            time.sleep(0.05)
    return [Forward(OUT_TOPIC, value, key=record.key)]


def main() -> int:
    settings = load_settings(RuntimeSettings)
    routing = FailureRouting(
        retry_tiers=(RetryTier(os.environ["WORKER_TIER_TOPIC"], 1.0),),
        dead_letter_topic=os.environ["WORKER_DEAD_LETTER_TOPIC"],
    )
    return run_consumer_service(
        settings=settings,
        group_id=os.environ["WORKER_GROUP"],
        topics=[os.environ["WORKER_IN_TOPIC"]],
        handler=handle,
        routing=routing,
        max_in_flight=int(os.environ.get("WORKER_MAX_IN_FLIGHT", "1")),
    )


if __name__ == "__main__":
    sys.exit(main())
