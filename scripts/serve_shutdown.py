"""A measurement aid (not project code): SIGTERM a real `specdiff serve` with 4 streaming
requests in flight and time how long until every process is gone, the port is free and
/dev/shm is as it was before the server started. One markdown row per drafter.

Usage, in the environment that holds vLLM (docs/serving.md):
    python scripts/serve_shutdown.py --verifier smollm2-135m-instruct --drafter ngram --drafter none ...
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

SHM = Path("/dev/shm")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serving(port: int) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in args and str(port).encode() in args:
            found.append(int(cmdline.parent.name))
    return found


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds it
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def stream(port: int, model: str, outcomes: list) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
    try:
        for _ in client.chat.completions.create(model=model, stream=True, temperature=0, max_tokens=400,
                                                messages=[{"role": "user", "content": "Write a long story."}]):
            pass
        outcomes.append("answered")
    except Exception as error:  # noqa: BLE001 - a dropped stream is the expected outcome
        outcomes.append(type(error).__name__)


def measure(verifier: str, drafter: str, log: Path) -> str:
    before = set(os.listdir(SHM))
    port = free_port()
    command = ["specdiff", "serve", "--verifier", verifier, "--drafter", drafter, "--port", str(port),
               "--max-model-len", "1024", "--max-num-seqs", "4", "--kv-cache-gib", "1"]
    server = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            return f"| {drafter} | did not start (see {log}) | | | | |"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            break
        except OSError:
            time.sleep(1)
    outcomes: list[str] = []
    threads = [threading.Thread(target=stream, args=(port, verifier, outcomes)) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(4)
    during = set(os.listdir(SHM)) - before
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)
    exited = time.monotonic() - started
    while serving(port) and time.monotonic() - started < 120:
        time.sleep(0.1)
    gone = time.monotonic() - started
    while not port_free(port) and time.monotonic() - started < 120:
        time.sleep(0.1)
    freed = time.monotonic() - started
    left = sorted(set(os.listdir(SHM)) - before)
    for thread in threads:
        thread.join(30)
    return (f"| {drafter} | {exited:.1f} | {gone:.1f} | {freed:.1f} | {', '.join(left) or 'as before'} "
            f"({len(during)} made while serving) | {server.returncode} | {', '.join(sorted(outcomes))} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--verifier", default="smollm2-135m-instruct")
    parser.add_argument("--drafter", action="append", required=True)
    parser.add_argument("--logs", default="/tmp/serve-shutdown")
    args = parser.parse_args()
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    print("| drafter | serve exited (s) | all processes gone (s) | port free (s) | /dev/shm after | exit code | "
          "requests |\n|---|---|---|---|---|---|---|", flush=True)
    for index, drafter in enumerate(args.drafter):
        print(measure(args.verifier, drafter, Path(args.logs) / f"{index}.log"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
