"""Server processes of the local stack: started in their own session, tracked by pid file, stopped whole.

A pid file holds the pid and the process's start time (from /proc), so a pid the kernel reused for an
unrelated process is recognised as stale and never signalled. A server's "family" is its process group
plus its descendants: PostgreSQL's backends call setsid() and leave the group, so the group alone would
miss them. Zombies count as stopped: where nothing reaps orphans (some container inits), a stopped server
whose parent was a finished CLI stays a zombie, holding no memory, ports or files.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from imgpipe.localstack.waiting import wait_until

FORCED_STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one server: its argv, extra environment, and the system user to run it as."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None


@dataclass(frozen=True)
class _ProcStat:
    state: str
    parent: int
    process_group: int
    start_time: int


def _read_stat(pid: int) -> _ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return _ProcStat(
        state=fields[0], parent=int(fields[1]), process_group=int(fields[2]), start_time=int(fields[19])
    )


def _is_zombie(stat: _ProcStat) -> bool:
    return stat.state in ("Z", "X")


def _live_processes() -> dict[int, _ProcStat]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _read_stat(int(entry.name))
            if stat is not None and not _is_zombie(stat):
                table[int(entry.name)] = stat
    return table


def still_alive(processes: dict[int, int]) -> list[int]:
    """Which of these pid -> start time pairs still name a live process (not a reused pid)."""
    alive = []
    for pid, start_time in processes.items():
        stat = _read_stat(pid)
        if stat is not None and stat.start_time == start_time and not _is_zombie(stat):
            alive.append(pid)
    return alive


# Servers this Python process started, so stopping them also reaps them (no zombies under pytest).
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def _reap(pid: int) -> None:
    with _children_lock:
        child = _children.get(pid)
        if child is not None and child.poll() is not None:
            del _children[pid]


@dataclass(frozen=True)
class PidRecord:
    """A started server: its pid (also its process group and session id) and start time."""

    pid: int
    start_time: int
    argv: tuple[str, ...] = ()

    def _stat(self) -> _ProcStat | None:
        _reap(self.pid)
        stat = _read_stat(self.pid)
        return stat if stat is not None and stat.start_time == self.start_time else None

    def is_running(self) -> bool:
        stat = self._stat()
        return stat is not None and not _is_zombie(stat)

    def family(self) -> dict[int, int]:
        """pid -> start time of the live server, its process group and its descendants."""
        if _read_stat(self.pid) is not None and self._stat() is None:
            return {}  # the pid now belongs to another process: nothing there is ours
        table = _live_processes()
        members = {pid: stat.start_time for pid, stat in table.items() if stat.process_group == self.pid}
        parents = [self.pid, *members]
        while parents:
            parent = parents.pop()
            for pid, stat in table.items():
                if stat.parent == parent and pid not in members:
                    members[pid] = stat.start_time
                    parents.append(pid)
        return members

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "start_time": self.start_time, "argv": list(self.argv)})

    @classmethod
    def from_json(cls, text: str) -> PidRecord:
        data = json.loads(text)
        return cls(pid=int(data["pid"]), start_time=int(data["start_time"]), argv=tuple(data.get("argv", ())))


def read_pid_file(path: Path) -> PidRecord | None:
    try:
        return PidRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # unreadable pid file from a crash mid-write: treat as stale


def spawn(spec: ProcessSpec, log_path: Path, pid_path: Path) -> PidRecord:
    """Start a server in its own session (so its whole group can be signalled) and write its pid file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    account = pwd.getpwnam(spec.user) if spec.user is not None else None
    with log_path.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(spec.argv)}\n".encode())
        log.flush()
        child = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=spec.cwd,
            env={**os.environ, **spec.env},
            start_new_session=True,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            # Drop root's supplementary groups too, not only uid and gid.
            extra_groups=[] if account else None,
        )
    with _children_lock:
        _children[child.pid] = child
    stat = _read_stat(child.pid)
    record = PidRecord(pid=child.pid, start_time=stat.start_time if stat else 0, argv=spec.argv)
    tmp = pid_path.with_suffix(".tmp")
    tmp.write_text(record.to_json())
    tmp.replace(pid_path)
    return record


def stop(record: PidRecord, stop_signal: signal.Signals, grace: float, what: str) -> None:
    """Send `stop_signal` to the server; after `grace` seconds SIGKILL whatever is left of its family.

    Returns only when no process of the family is left; raises TimeoutError if one survives SIGKILL.
    """
    # Taken before signalling: once the server is gone its orphans no longer point back to it.
    family = record.family()

    def survivors() -> list[int]:
        family.update(record.family())
        return still_alive(family)

    if record.is_running():
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, stop_signal)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not survivors(), grace, f"{what} to stop")
    if survivors():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGKILL)
        for pid in survivors():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not survivors(), FORCED_STOP_TIMEOUT, f"{what} to die after SIGKILL")
    _reap(record.pid)
