"""`specdiff serve`'s supervisor stops a server within the grace time whatever it does with
SIGTERM, takes its whole process group down and removes its OpenMP shared-memory files.
A stand-in server (a Python child with a grandchild) plays vLLM here; the real server is
checked under the vllm marker."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

FAKE_SERVER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from pathlib import Path
    shm, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "ignores-sigterm":  # as vLLM does while it loads a model
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    for pid in (os.getpid(), engine.pid):
        (shm / f"__KMP_REGISTERED_LIB_{pid}_0").write_text("x")
    for name in ("psm_engine", "sem.mp-engine"):  # what a killed engine leaves behind
        (shm / name).write_text("x")
    (shm / "pids").write_text(f"{os.getpid()} {engine.pid}")
    if mode == "exits-3":
        sys.exit(3)
    time.sleep(300)
""")


def start_supervisor(tmp_path: Path, mode: str, grace_s: float) -> subprocess.Popen:
    script = tmp_path / "server.py"
    script.write_text(FAKE_SERVER)
    supervisor = (f"import sys; from pathlib import Path; from specdiff.serving.supervisor import supervise; "
                  f"sys.exit(supervise([sys.executable, {str(script)!r}, {str(tmp_path)!r}, {mode!r}], "
                  f"dict(__import__('os').environ), grace_s={grace_s}, shm=Path({str(tmp_path)!r})))")
    process = subprocess.Popen([sys.executable, "-c", supervisor])
    deadline = time.monotonic() + 30
    while not (tmp_path / "pids").exists():
        assert time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.05)
    time.sleep(0.3)  # the supervisor has seen the group
    return process


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("mode", ["ignores-sigterm", "stops-on-sigterm"])
def test_sigterm_stops_the_server_and_everything_it_started_within_the_grace_time(tmp_path, mode):
    (tmp_path / "__KMP_REGISTERED_LIB_1_0").write_text("another process's")
    process = start_supervisor(tmp_path, mode, grace_s=1.0)
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    process.send_signal(signal.SIGTERM)
    # The stand-ins sleep 300 s and one ignores SIGTERM: only the supervisor's kill after the
    # 1 s grace time ends them within this bound, however loaded the machine.
    assert process.wait(timeout=60) == 0
    assert not any(alive(pid) for pid in pids), "server or engine process left running"
    assert sorted(p.name for p in tmp_path.glob("__KMP_REGISTERED_LIB_*")) == ["__KMP_REGISTERED_LIB_1_0"]


def test_a_server_that_exits_by_itself_passes_on_its_status(tmp_path):
    process = start_supervisor(tmp_path, "exits-3", grace_s=1.0)
    assert process.wait(timeout=15) == 3
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert not any(alive(pid) for pid in pids), "its engine process is taken down too"
    assert sorted(p.name for p in tmp_path.glob("__KMP_REGISTERED_LIB_*")) == []


def test_sigterm_before_the_server_starts_ends_the_command_at_once(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(FAKE_SERVER)
    command = (f"import sys, time; from pathlib import Path; from specdiff.serving.supervisor import Stopper, supervise; "
               f"stopper = Stopper().install(); Path({str(tmp_path / 'ready')!r}).write_text('x'); "
               f"time.sleep(30); sys.exit(supervise([sys.executable, {str(script)!r}, {str(tmp_path)!r}, 'x'], {{}}, "
               f"stopper=stopper))")
    process = subprocess.Popen([sys.executable, "-c", command])
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0, "it would sleep 30 s, then start the server, had SIGTERM not ended it"
    assert not (tmp_path / "pids").exists(), "no server was started"


def test_segments_a_killed_engine_leaves_are_removed_and_no_others(tmp_path):
    (tmp_path / "psm_before").write_text("made before the server started")
    process = start_supervisor(tmp_path, "ignores-sigterm", grace_s=0.5)
    held = tmp_path / "psm_held"
    with open(held, "w") as handle:  # made while the server ran, but still open in a living process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        handle.write("in use")
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("psm_", "sem.")))
    assert names == ["psm_before", "psm_held"]
