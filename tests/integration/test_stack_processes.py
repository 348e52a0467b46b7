"""Process handling of the local stack with throwaway processes: stop leaves nothing behind."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from imgpipe.localstack import processes
from imgpipe.localstack.processes import ProcessSpec
from imgpipe.localstack.waiting import wait_until

pytestmark = pytest.mark.integration


def test_stop_kills_the_whole_family_even_children_that_left_the_group(tmp_path: Path) -> None:
    # Like PostgreSQL's backends: one child stays in the server's process group, one calls setsid().
    spec = ProcessSpec(argv=("bash", "-c", "sleep 300 & setsid sleep 300 & wait"))
    record = processes.spawn(spec, tmp_path / "family.log", tmp_path / "family.pid")
    family = wait_until(lambda: len(record.family()) == 3 and record.family(), 10, "bash and both sleeps")
    assert processes.read_pid_file(tmp_path / "family.pid") == record

    # bash dies on SIGTERM but its children do not: the SIGKILL pass must find them.
    processes.stop(record, signal.SIGTERM, grace=0.5, what="family")

    assert processes.still_alive(family) == []
    assert not record.is_running()


def test_a_server_that_ignores_its_stop_signal_is_killed(tmp_path: Path) -> None:
    spec = ProcessSpec(argv=("bash", "-c", "trap '' TERM; while true; do sleep 1; done"))
    record = processes.spawn(spec, tmp_path / "stubborn.log", tmp_path / "stubborn.pid")
    wait_until(lambda: len(record.family()) >= 2, 10, "the loop to start sleeping")

    processes.stop(record, signal.SIGTERM, grace=0.5, what="stubborn")

    assert record.family() == {}
    assert not record.is_running()
