import pytest

from imgpipe.ratelimit import KeyedLimiter, take

pytestmark = pytest.mark.unit


def test_burst_then_refill_at_rate() -> None:
    state = None
    granted = 0
    for _ in range(10):
        state, wait = take(state, rate=2.0, burst=3.0, now=100.0)
        granted += wait == 0.0
    assert granted == 3  # the burst
    assert wait == pytest.approx(0.5)  # one token at 2/s

    state, wait = take(state, rate=2.0, burst=3.0, now=100.5)
    assert wait == 0.0
    state, wait = take(state, rate=2.0, burst=3.0, now=100.5)
    assert wait > 0


def test_refill_never_exceeds_burst() -> None:
    state, _ = take(None, rate=100.0, burst=2.0, now=0.0)
    granted = 0
    for _ in range(5):
        state, wait = take(state, rate=100.0, burst=2.0, now=1_000.0)
        granted += wait == 0.0
    assert granted == 2


def test_keys_are_independent_and_bounded() -> None:
    limiter = KeyedLimiter(max_keys=2)
    assert limiter.try_acquire("a", rate=0.001, burst=1) == 0.0
    assert limiter.try_acquire("a", rate=0.001, burst=1) > 0
    assert limiter.try_acquire("b", rate=0.001, burst=1) == 0.0
    limiter.try_acquire("c", rate=0.001, burst=1)  # evicts "a", the least recently used
    assert limiter.try_acquire("a", rate=0.001, burst=1) == 0.0
