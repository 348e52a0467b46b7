import pytest

from imgpipe.runtime.offsets import MAX_METADATA_CHARS, CommitPoint, PartitionWindow, parse_done

pytestmark = pytest.mark.unit


def test_eight_in_flight_with_the_third_finishing_last_stores_only_up_to_the_third() -> None:
    window = PartitionWindow()
    for offset in range(8):
        window.take(offset)
    for offset in (0, 1, 3, 4, 5, 6, 7):
        window.finish(offset)

    point = window.commit_point()
    assert point == CommitPoint(2, (3, 4, 5, 6, 7))
    assert point.metadata() == "imgpipe-done:3-7"
    assert window.commit_point() is None  # unchanged: nothing new to store

    window.finish(2)
    assert window.commit_point() == CommitPoint(8, ())


def test_the_next_owner_skips_exactly_what_the_metadata_names() -> None:
    done = parse_done("imgpipe-done:3-5,7", committed=2)
    assert done == {3, 4, 5, 7}
    window = PartitionWindow(done)
    assert [offset for offset in range(2, 9) if not window.finished_before(offset)] == [2, 6, 8]


def test_foreign_or_stale_metadata_skips_nothing_it_should_not() -> None:
    assert parse_done(None, 0) == frozenset()
    assert parse_done("written by another tool", 0) == frozenset()
    assert parse_done("imgpipe-done:x-y", 0) == frozenset()
    assert parse_done("imgpipe-done:3-7", committed=6) == {6, 7}  # below the commit: already passed


def test_metadata_is_cut_to_fit_the_broker_limit_at_a_range_boundary() -> None:
    scattered = tuple(range(1_000_000, 1_000_000 + 4000, 2))  # no two adjacent: one entry each
    text = CommitPoint(0, scattered).metadata()
    assert len(text) <= MAX_METADATA_CHARS
    assert parse_done(text, 0) <= set(scattered)  # fewer skips, never a wrong one


def test_gaps_in_offsets_do_not_hold_the_commit_back() -> None:
    window = PartitionWindow()
    for offset in (10, 12, 15):  # compacted or transaction-marker gaps
        window.take(offset)
        window.finish(offset)
    assert window.commit_point() == CommitPoint(16, ())
