"""Run a server as a child process and stop it within a bounded time, whatever state it is in.

vLLM's API server alone does not always stop on SIGTERM: while it loads the model it does
not react, and with requests in flight it kills its engine and then waits, for as long as
the clients keep their connections open, before it lets go of the port. So ``specdiff
serve`` stays as the parent: SIGTERM or SIGINT (Ctrl-C) is passed to the server, which gets
``grace_s`` seconds to shut down as it normally does; then its whole process group (the
engine processes included) is killed. Requests still in flight then end with a dropped
connection, which clients see as an error. Last, the ``/dev/shm/__KMP_REGISTERED_LIB_<pid>_*``
files that Intel's OpenMP runtime leaves for every process it ran in (it removes them only
on a normal exit) are deleted for the processes of this server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

GRACE_S = 10.0  # what the server gets to stop by itself before its processes are killed
POLL_S = 0.2
SHM = Path("/dev/shm")


def group_members(group: int) -> set[int]:
    """Pids of the running processes in process group ``group`` (Linux /proc)."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # after the name: state, ppid, pgrp; zombies are gone
            members.add(int(stat.parent.name))
    return members


def remove_openmp_files(pids: set[int], folder: Path = SHM) -> list[Path]:
    """Delete Intel OpenMP's registration files of ``pids`` in ``folder``; returns them."""
    removed = []
    for pid in pids:
        for path in folder.glob(f"__KMP_REGISTERED_LIB_{pid}_*"):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                continue
    return removed


def supervise(argv: list[str], env: dict[str, str], grace_s: float = GRACE_S, shm: Path = SHM) -> int:
    """Run ``argv`` in a new session until it exits or this process is told to stop.
    Returns the child's exit status, or 0 when it was stopped on request."""
    stop_requested: list[float] = []

    def request_stop(signum, frame) -> None:
        if not stop_requested:
            stop_requested.append(time.monotonic())
            try:
                os.kill(child.pid, signal.SIGTERM)  # the server's own shutdown first
            except ProcessLookupError:
                pass

    child = subprocess.Popen(argv, env=env, start_new_session=True)
    seen = {child.pid}
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while child.poll() is None:
            seen |= group_members(child.pid)
            if stop_requested and time.monotonic() - stop_requested[0] > grace_s:
                _kill_group(child.pid)
            time.sleep(POLL_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        seen |= group_members(child.pid)
        _kill_group(child.pid)  # engine processes the server left behind
        deadline = time.monotonic() + 5
        while group_members(child.pid) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        remove_openmp_files(seen, shm)
    return 0 if stop_requested else child.returncode


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
