"""Retry delays (bounds of the jittered distribution) and the per-URL circuit breaker's transitions."""

from __future__ import annotations

import json
import random

import pytest

from imgpipe.callback.backoff import (
    BreakerState,
    breaker_allows,
    breaker_half_open,
    breaker_record,
    retry_delay,
)

pytestmark = pytest.mark.unit

BASE, CAP = 5.0, 600.0
SAMPLES = 2000


def delays(attempt: int, *, base: float = BASE, cap: float = CAP, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [retry_delay(attempt, base_seconds=base, cap_seconds=cap, rng=rng) for _ in range(SAMPLES)]


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 10, 20, 100, 5000])
def test_delay_bounds(attempt: int) -> None:
    ceiling = min(CAP, BASE * 2 ** min(attempt - 1, 100))
    got = delays(attempt)
    assert all(BASE / 2 <= d <= ceiling for d in got)
    assert all(d <= CAP for d in got)
    # Jittered across the whole range, not bunched at one end.
    assert min(got) < BASE / 2 + 0.05 * (ceiling - BASE / 2)
    assert max(got) > ceiling - 0.05 * (ceiling - BASE / 2)
    assert len(set(got)) > SAMPLES * 0.99


def test_ceiling_doubles_until_the_cap() -> None:
    assert max(delays(1)) <= 5.0
    assert max(delays(2)) <= 10.0
    assert max(delays(3)) <= 20.0
    assert max(delays(3)) > 18.0
    assert 590.0 < max(delays(8)) <= 600.0  # 5 * 2**7 = 640 is over the cap


def test_delays_never_spin_even_with_a_tiny_cap() -> None:
    assert all(d == 1.0 for d in delays(1, base=4.0, cap=1.0))  # the cap wins over the floor
    assert all(d >= 0.05 for d in delays(3, base=0.1, cap=CAP))


def test_seeded_rng_is_reproducible() -> None:
    assert delays(4, seed=1) == delays(4, seed=1)
    assert delays(4, seed=1) != delays(4, seed=2)
    assert BASE / 2 <= retry_delay(3, base_seconds=BASE, cap_seconds=CAP) <= 20.0  # default rng


@pytest.mark.parametrize(
    ("attempt", "base", "cap"), [(0, 5.0, 10.0), (1, 0.0, 10.0), (1, 5.0, 0.0), (1, -1.0, 5.0)]
)
def test_invalid_delay_arguments(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        retry_delay(attempt, base_seconds=base, cap_seconds=cap)


# --- breaker --------------------------------------------------------------------------------------

FAIL_MAX, RESET = 3, 30.0


def record(state: BreakerState, *, success: bool, now: float) -> BreakerState:
    return breaker_record(state, success=success, now=now, fail_max=FAIL_MAX, reset_seconds=RESET)


def test_breaker_opens_after_fail_max_consecutive_failures() -> None:
    state = BreakerState()
    assert breaker_allows(state, 0.0)
    state = record(state, success=False, now=100.0)
    state = record(state, success=False, now=101.0)
    assert state == BreakerState(consecutive_failures=2, open_until=0.0)
    assert breaker_allows(state, 102.0)
    state = record(state, success=False, now=102.0)
    assert state == BreakerState(consecutive_failures=3, open_until=132.0)
    assert not breaker_allows(state, 102.0)
    assert not breaker_allows(state, 131.999)
    assert not breaker_half_open(state, 131.999)


def test_a_success_resets_the_count() -> None:
    state = record(record(BreakerState(), success=False, now=1.0), success=False, now=2.0)
    state = record(state, success=True, now=3.0)
    assert state == BreakerState()
    state = record(record(state, success=False, now=4.0), success=False, now=5.0)
    assert breaker_allows(state, 6.0)  # two in a row again, not four


def test_half_open_trial_success_closes() -> None:
    opened = BreakerState(consecutive_failures=3, open_until=132.0)
    assert breaker_allows(opened, 132.0)
    assert breaker_half_open(opened, 132.0)
    closed = record(opened, success=True, now=133.0)
    assert closed == BreakerState()
    assert not breaker_half_open(closed, 133.0)
    assert breaker_allows(closed, 133.0)


def test_half_open_trial_failure_reopens() -> None:
    opened = BreakerState(consecutive_failures=3, open_until=132.0)
    reopened = record(opened, success=False, now=140.0)
    assert reopened == BreakerState(consecutive_failures=4, open_until=170.0)
    assert not breaker_allows(reopened, 169.0)
    assert breaker_half_open(reopened, 170.0)


def test_late_outcomes_while_open() -> None:
    opened = BreakerState(consecutive_failures=3, open_until=132.0)
    # A request that was in flight when the breaker opened fails: it stays open until the same time,
    assert record(opened, success=False, now=110.0) == BreakerState(consecutive_failures=4, open_until=132.0)
    # and one that succeeds shows the receiver is up: closed.
    assert record(opened, success=True, now=110.0) == BreakerState()


def test_fail_max_one_opens_at_once() -> None:
    state = breaker_record(BreakerState(), success=False, now=10.0, fail_max=1, reset_seconds=5.0)
    assert state == BreakerState(consecutive_failures=1, open_until=15.0)


def test_invalid_breaker_settings() -> None:
    with pytest.raises(ValueError):
        breaker_record(BreakerState(), success=False, now=0.0, fail_max=0, reset_seconds=5.0)
    with pytest.raises(ValueError):
        breaker_record(BreakerState(), success=False, now=0.0, fail_max=3, reset_seconds=0.0)


def test_breaker_state_round_trips_through_json() -> None:
    for state in (BreakerState(), BreakerState(2, 0.0), BreakerState(7, 1_795_335_000.25)):
        data = json.loads(json.dumps(state.to_dict()))
        assert BreakerState.from_dict(data) == state
    assert BreakerState().to_dict() == {"consecutive_failures": 0, "open_until": 0.0}
    assert BreakerState.from_dict({}) == BreakerState()
    assert BreakerState.from_dict({"consecutive_failures": 1, "open_until": 5}) == BreakerState(1, 5.0)
    for bad in (
        {"consecutive_failures": -1},
        {"consecutive_failures": "2"},
        {"open_until": None},
        {"open_until": True},
    ):
        with pytest.raises(ValueError):
            BreakerState.from_dict(bad)
    with pytest.raises(AttributeError):
        BreakerState().consecutive_failures = 1  # type: ignore[misc]
