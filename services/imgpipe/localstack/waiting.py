"""Waiting on a condition with a deadline, instead of sleeping a guessed amount of time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    max_interval: float = 0.5,
) -> T:
    """Call `predicate` until it returns something truthy and return that, or raise TimeoutError.

    The predicate may raise to abort early (e.g. when the process it waits for has died). The poll
    interval grows from `interval` to `max_interval` (half a second) so quick conditions are seen
    quickly and slow ones do not burn CPU.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, max_interval)
