"""In-order offsets with many messages of one partition in flight: a pure state machine.

A partition's stored offset is its first unfinished message, so a crash redelivers from there. The
messages after it that did finish are named in the commit's metadata; whoever owns the partition
next skips them, so a restart runs again exactly the messages that were unfinished. (Kafka keeps
commit metadata with the offset, up to the broker's `offset.metadata.max.bytes`, 4096 by default.)
"""

from __future__ import annotations

from dataclasses import dataclass

_PREFIX = "imgpipe-done:"
MAX_METADATA_CHARS = 4000  # under the broker's default limit of 4096 bytes


@dataclass(frozen=True)
class CommitPoint:
    offset: int  # the next offset to consume: the first unfinished message, or past the last taken
    done_beyond: tuple[int, ...]  # finished offsets after `offset`, in order

    def metadata(self) -> str:
        """`done_beyond` as ranges ("imgpipe-done:5-9,12"), cut to fit: skipping fewer is safe."""
        text = _PREFIX + ",".join(_ranges(self.done_beyond))
        if len(text) <= MAX_METADATA_CHARS:
            return text
        return text[: text.rfind(",", 0, MAX_METADATA_CHARS)]


def parse_done(metadata: str | None, committed: int) -> frozenset[int]:
    """The finished offsets a commit's metadata names (only those past the committed offset)."""
    if not metadata or not metadata.startswith(_PREFIX):
        return frozenset()
    done: set[int] = set()
    for part in filter(None, metadata[len(_PREFIX) :].split(",")):
        first, _, last = part.partition("-")
        try:
            done.update(range(int(first), int(last or first) + 1))
        except ValueError:
            return frozenset()  # not ours after all: skip nothing
    return frozenset(offset for offset in done if offset >= committed)


class PartitionWindow:
    """The messages of one partition taken since the last commit point, in offset order."""

    def __init__(self, done_before: frozenset[int] = frozenset()) -> None:
        self._taken: dict[int, bool] = {}  # offset -> finished; insertion order is offset order
        self._done_before = set(done_before)  # finished by an earlier owner, per its commit metadata
        self._last: CommitPoint | None = None

    def finished_before(self, offset: int) -> bool:
        """Whether an earlier owner finished this message already (then take and finish it unrun)."""
        return offset in self._done_before

    def take(self, offset: int) -> None:
        self._taken[offset] = False
        self._done_before.discard(offset)

    def finish(self, offset: int) -> None:
        if offset in self._taken:
            self._taken[offset] = True

    @property
    def unfinished(self) -> int:
        return sum(1 for done in self._taken.values() if not done)

    def commit_point(self) -> CommitPoint | None:
        """Drop the finished prefix; the new point to store, or None when it has not changed."""
        last_done: int | None = None
        while self._taken:
            offset = next(iter(self._taken))
            if not self._taken[offset]:
                break
            del self._taken[offset]
            last_done = offset
        if self._taken:
            head = next(iter(self._taken))
            point = CommitPoint(head, tuple(o for o, done in self._taken.items() if done))
        elif last_done is not None:
            point = CommitPoint(last_done + 1, ())
        else:
            return None
        if point == self._last:
            return None
        self._last = point
        return point


def _ranges(offsets: tuple[int, ...]) -> list[str]:
    parts: list[str] = []
    start = previous = None
    for offset in offsets:
        if previous is not None and offset == previous + 1:
            previous = offset
            continue
        if start is not None:
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
        start = previous = offset
    if start is not None:
        parts.append(f"{start}" if start == previous else f"{start}-{previous}")
    return parts
