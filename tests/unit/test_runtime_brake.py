"""The dead-letter brake's arithmetic: runs, shares of a full window, a sliding window, limits off."""

from __future__ import annotations

import pytest

from imgpipe.runtime.brake import DeadLetterBrake, DeadLetterBrakeTripped

pytestmark = pytest.mark.unit


def feed(brake: DeadLetterBrake, outcomes: str) -> None:
    """`d` a dead letter, `.` a message handled otherwise."""
    for outcome in outcomes:
        brake.record(outcome == "d")


def test_a_run_of_dead_letters_trips_it_and_one_good_message_resets_the_run() -> None:
    brake = DeadLetterBrake("g", max_ratio=None, max_consecutive=3, window=100)
    feed(brake, "dd.dd.dd.")
    with pytest.raises(DeadLetterBrakeTripped, match="3 messages in a row"):
        feed(brake, "ddd")
    assert brake.tripped
    feed(brake, "ddd")  # stopping: it says so once


def test_the_share_is_judged_only_on_a_full_window() -> None:
    brake = DeadLetterBrake("g", max_ratio=0.1, max_consecutive=None, window=10)
    feed(brake, "..d......")  # 1 of 9 is over 10%, but 9 is not a window yet
    feed(brake, ".")  # 1 of 10: at the limit, not over it
    with pytest.raises(DeadLetterBrakeTripped, match="2 of the last 10 messages"):
        feed(brake, "d")  # the first `.` slid out, the first d is still in: 2 of 10


def test_old_dead_letters_slide_out_of_the_window() -> None:
    brake = DeadLetterBrake("g", max_ratio=0.1, max_consecutive=None, window=10)
    feed(brake, "d" + "." * 9)  # 1 of 10
    feed(brake, "d" + "." * 9)  # the first slid out as the second came in: 1 of 10 all along
    feed(brake, "." * 9 + "d")
    assert not brake.tripped


def test_limits_can_be_turned_off() -> None:
    feed(DeadLetterBrake("g", max_ratio=None, max_consecutive=None, window=5), "d" * 50)
