"""When to retry a callback, and a per-URL circuit breaker, as pure functions over plain values.

`retry_delay`: exponential backoff with full jitter, floored so that retries never spin.

The breaker is an immutable `BreakerState` per URL, kept by the caller (in a faust table: `to_dict` /
`from_dict` give JSON-friendly values). Times are wall-clock Unix seconds (`time.time()`), since the
state outlives the process and may move to another host:

- closed (`open_until == 0`): sends are allowed; `fail_max` consecutive failures open it;
- open (`now < open_until`): nothing is sent until `open_until`, `reset_seconds` after it opened;
- half-open (`0 < open_until <= now`): `breaker_allows` is true again, and the caller sends ONE trial
  request (`breaker_half_open` tells it that it is in this state) and records its outcome: a success
  closes the breaker, a failure re-opens it for another `reset_seconds`.

Any success closes the breaker, including one of a request that was in flight when it opened.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

_RNG: Final = random.Random()
# 2**62 times any sensible base is far past any cap; larger exponents would overflow a float.
_MAX_DOUBLINGS: Final = 62


def retry_delay(
    attempt: int, *, base_seconds: float, cap_seconds: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based) before the next one.

    Uniform in [min(base/2, ceiling), ceiling] with ceiling = min(cap, base * 2**(attempt - 1)): full
    jitter spreads the retries of many failing requests apart, and the floor of half the base keeps
    the first retries from coming at once. The result never exceeds `cap_seconds`."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    if not base_seconds > 0 or not cap_seconds > 0:
        raise ValueError(f"base_seconds and cap_seconds must be > 0, got {base_seconds}, {cap_seconds}")
    ceiling = min(cap_seconds, base_seconds * 2 ** min(attempt - 1, _MAX_DOUBLINGS))
    floor = min(base_seconds / 2, ceiling)
    return (rng or _RNG).uniform(floor, ceiling)


@dataclass(frozen=True)
class BreakerState:
    """One URL's circuit breaker: failures in a row, and until when it is open (0.0: closed)."""

    consecutive_failures: int = 0
    open_until: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"consecutive_failures": self.consecutive_failures, "open_until": self.open_until}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BreakerState:
        """The inverse of `to_dict`; missing keys take their defaults."""
        failures = data.get("consecutive_failures", 0)
        open_until = data.get("open_until", 0.0)
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
            raise ValueError(f"consecutive_failures must be an int >= 0, got {failures!r}")
        if isinstance(open_until, bool) or not isinstance(open_until, int | float) or open_until < 0:
            raise ValueError(f"open_until must be a number >= 0, got {open_until!r}")
        return cls(consecutive_failures=failures, open_until=float(open_until))


def breaker_allows(state: BreakerState, now: float) -> bool:
    """Whether a request may be sent: closed, or half-open (then only one trial; see the module doc)."""
    return now >= state.open_until


def breaker_half_open(state: BreakerState, now: float) -> bool:
    """Whether the breaker was open and its wait is over: the next request is the one trial."""
    return 0.0 < state.open_until <= now


def breaker_record(
    state: BreakerState, *, success: bool, now: float, fail_max: int, reset_seconds: float
) -> BreakerState:
    """The state after a request's outcome."""
    if fail_max < 1 or not reset_seconds > 0:
        raise ValueError(f"fail_max must be >= 1 and reset_seconds > 0, got {fail_max}, {reset_seconds}")
    if success:
        return BreakerState()
    failures = state.consecutive_failures + 1
    if breaker_half_open(state, now) or (state.open_until == 0.0 and failures >= fail_max):
        return BreakerState(consecutive_failures=failures, open_until=now + reset_seconds)
    # Closed below the threshold, or already open (a request sent before it opened): the opening
    # time stays.
    return BreakerState(consecutive_failures=failures, open_until=state.open_until)
