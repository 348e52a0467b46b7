import pytest

from imgpipe.runtime.consumer import FailureRouting, RetryTier

pytestmark = pytest.mark.unit


def test_each_failed_attempt_moves_one_tier_up_then_dead_letters() -> None:
    routing = FailureRouting(
        retry_tiers=(RetryTier("retry-a", 10), RetryTier("retry-b", 60)), dead_letter_topic="dead"
    )

    assert routing.tier_after(1) == RetryTier("retry-a", 10)
    assert routing.tier_after(2) == RetryTier("retry-b", 60)
    assert routing.tier_after(3) is None
