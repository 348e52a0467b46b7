"""Token buckets: `rate` tokens per second refill up to `burst`; each request takes one.

The bucket state is two numbers so that it can live anywhere: in process memory for the API's
per-tenant limits, or in a faust table for the callback service's per-URL limits.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketState:
    tokens: float
    updated_at: float  # seconds, on whatever clock the caller uses consistently


def take(state: BucketState | None, rate: float, burst: float, now: float) -> tuple[BucketState, float]:
    """Try to take one token. Returns the new state and 0.0 when taken, or the seconds until a
    token will be available (state unchanged but refilled) when the bucket is empty."""
    if state is None:
        state = BucketState(tokens=burst, updated_at=now)
    tokens = min(burst, state.tokens + max(0.0, now - state.updated_at) * rate)
    if tokens >= 1.0:
        return BucketState(tokens - 1.0, now), 0.0
    wait = (1.0 - tokens) / rate if rate > 0 else float("inf")
    return BucketState(tokens, now), wait


class KeyedLimiter:
    """Thread-safe token buckets per key, forgetting the least recently used beyond `max_keys`."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._buckets: OrderedDict[str, BucketState] = OrderedDict()
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def try_acquire(self, key: str, rate: float, burst: float) -> float:
        """0.0 when allowed; otherwise the seconds to wait (a Retry-After)."""
        now = time.monotonic()
        with self._lock:
            state, wait = take(self._buckets.get(key), rate, burst, now)
            self._buckets[key] = state
            self._buckets.move_to_end(key)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
            return wait
