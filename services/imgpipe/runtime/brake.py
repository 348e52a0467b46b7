"""The dead-letter brake (docs/decisions/0005): a consumer that dead-letters too much of what it reads stops.

After a bad deploy (a handler that rejects everything, a schema change the code cannot read) the
consume loop would otherwise drain a whole topic into the dead-letter topic in minutes, each message
"handled". Stopping instead leaves the rest where it is, for the fixed version to read. Arroyo's
`DlqLimit` does the same; Sentry runs it at 1% of messages or 1,000 in a row.
"""

from __future__ import annotations

from collections import deque

from prometheus_client import Counter

BRAKE_TRIPPED = Counter(
    "imgpipe_dead_letter_brake_tripped_total",
    "Times a consumer stopped because it dead-lettered too much of what it read",
    ["group"],
)


class DeadLetterBrakeTripped(RuntimeError):
    """Raised out of the consume loop: the service stops with this message (and exits non-zero)."""


class DeadLetterBrake:
    """Counts the outcomes of the messages a consumer reads and trips on a run of dead letters, or on
    their share of the last `window` outcomes (judged only once that many were seen, so a poison
    message among the first few is not a share of 50%). None turns a limit off."""

    def __init__(self, group: str, max_ratio: float | None, max_consecutive: int | None, window: int) -> None:
        self._group = group
        self._max_ratio = max_ratio
        self._max_consecutive = max_consecutive
        self._recent: deque[bool] = deque(maxlen=window)
        self._dead_in_window = 0
        self._consecutive = 0
        self.tripped = False

    def record(self, dead_lettered: bool) -> None:
        if self.tripped:
            return  # stopping: what the shutdown settles was handled (dead-lettered) before the trip
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._dead_in_window -= 1  # about to fall out of the window
        self._recent.append(dead_lettered)
        self._dead_in_window += dead_lettered
        self._consecutive = self._consecutive + 1 if dead_lettered else 0
        if self._max_consecutive is not None and self._consecutive >= self._max_consecutive:
            self._trip(f"{self._consecutive} messages in a row were dead-lettered")
        window_full = len(self._recent) == self._recent.maxlen
        if self._max_ratio is not None and window_full and self._share() > self._max_ratio:
            self._trip(
                f"{self._dead_in_window} of the last {len(self._recent)} messages were dead-lettered "
                f"(over {self._max_ratio:.1%})"
            )

    def _share(self) -> float:
        return self._dead_in_window / len(self._recent)

    def _trip(self, why: str) -> None:
        self.tripped = True
        BRAKE_TRIPPED.labels(self._group).inc()
        raise DeadLetterBrakeTripped(
            f"dead-letter brake: {why}; consumer group {self._group} stops before it drains its topics "
            "into the dead-letter topic. Fix the cause (imgpipe deadletters list shows the reasons), "
            "then restart; the messages not yet handled are still on their topics."
        )
