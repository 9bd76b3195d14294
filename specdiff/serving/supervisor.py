"""Run a server as a child process and stop it within a bounded time, whatever state it is in.

vLLM's API server alone does not always stop on SIGTERM: while it loads the model it does
not react, and with requests in flight it kills its engine and then waits, for as long as
the clients keep their connections open, before it lets go of the port. So ``specdiff
serve`` stays as the parent: SIGTERM or SIGINT (Ctrl-C) is passed to the server, which gets
``grace_s`` seconds to shut down as it normally does; then its whole process group (the
engine processes included) is killed. Requests still in flight then end with a dropped
connection, which clients see as an error. Last, what killed processes cannot clean up
themselves is removed: the ``/dev/shm/__KMP_REGISTERED_LIB_<pid>_*`` files that Intel's
OpenMP runtime leaves for every process it ran in (it removes them only on a normal exit),
and the shared-memory segments (``psm_*``) and semaphores (``sem.mp-*``) of Python's
multiprocessing that vLLM's engine made while the server ran and that no living process
still holds open or mapped (vLLM unlinks them only when its engine shuts down normally).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

GRACE_S = 10.0  # what the server gets to stop by itself before its processes are killed
POLL_S = 0.2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
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
    return _unlink([path for pid in pids for path in folder.glob(f"__KMP_REGISTERED_LIB_{pid}_*")])


def _unlink(paths: list[Path]) -> list[Path]:
    """Delete ``paths``; returns those deleted (one already gone, or not ours, is skipped)."""
    removed = []
    for path in paths:
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed


SEGMENT_PATTERNS = ("psm_*", "sem.mp-*")  # multiprocessing.shared_memory and its named semaphores


def held_paths(folder: Path = SHM) -> set[Path]:
    """Files under ``folder`` that some process has open or mapped (Linux /proc)."""
    prefix, held = str(folder) + "/", set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            mapped = [line.split(maxsplit=5)[-1] for line in (proc / "maps").read_text().splitlines()
                      if line.count(" ") >= 5]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        held.update(Path(name.removesuffix(" (deleted)")) for name in (*links, *mapped) if name.startswith(prefix))
    return held


def remove_orphaned_segments(before: set[str], folder: Path = SHM) -> list[Path]:
    """Delete the multiprocessing segments in ``folder`` that were not there ``before`` (names)
    and that no process holds; returns them."""
    new = [path for pattern in SEGMENT_PATTERNS for path in folder.glob(pattern) if path.name not in before]
    if not new:
        return []
    held = held_paths(folder)
    return _unlink([path for path in new if path not in held])


def shm_names(folder: Path = SHM) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


class Stopper:
    """SIGTERM and SIGINT handling for the whole life of ``specdiff serve``. Installed first
    thing: a signal before the server exists ends the command at once (exit 0, nothing was
    started); after, it asks the server to stop and starts the grace time."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.requested_at: float | None = None

    def install(self) -> Stopper:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.child is None:
            raise SystemExit(0)
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            try:
                os.kill(self.child.pid, signal.SIGTERM)  # the server's own shutdown first
            except ProcessLookupError:
                pass

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start the child in a session of its own; a signal that arrives meanwhile is held
        until ``self.child`` is set, so no child is ever left without its supervisor."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.child = subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=_unblock_stop_signals)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self.child


def _unblock_stop_signals() -> None:  # in the child, before it execs: vLLM must see SIGTERM
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def supervise(argv: list[str], env: dict[str, str], grace_s: float = GRACE_S, shm: Path = SHM,
              stopper: Stopper | None = None) -> int:
    """Run ``argv`` until it exits or this process is told to stop (``stopper``, installed
    here if not given). Returns the child's exit status, or 0 when it was stopped on request."""
    stopper = stopper or Stopper().install()
    before = shm_names(shm)
    child = stopper.start(argv, env)
    seen = {child.pid}
    try:
        while child.poll() is None:
            seen |= group_members(child.pid)
            if stopper.requested_at is not None and time.monotonic() - stopper.requested_at > grace_s:
                _kill_group(child.pid)
            time.sleep(POLL_S)
    finally:
        seen |= group_members(child.pid)
        _kill_group(child.pid)  # engine processes the server left behind
        deadline = time.monotonic() + 5
        while group_members(child.pid) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        remove_openmp_files(seen, shm)
        remove_orphaned_segments(before, shm)
    return 0 if stopper.requested_at is not None else child.returncode


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
