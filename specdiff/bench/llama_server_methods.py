"""Bench methods through a ``llama-server`` binary (llama.cpp's HTTP server), given with
``--llama-server PATH``: an option, not a dependency (llama-cpp-python ships no binaries;
docs/backends.md says how to build one from the llama.cpp it vendors).

- ``llama-server``: plain decoding, the server's own loop;
- ``llama-server-<type>``: the server's speculative decoding with ``--spec-type <type>``, one of
  its n-gram proposers (``ngram-simple``, ``ngram-map-k``, ``ngram-map-k4v``, ``ngram-mod``) at
  their defaults: llama.cpp's own answer to drafting without a draft model.

Each method starts its own server on the verifier's GGUF (one more copy of the weights, 1 GB for
the 1.5B) on a free local port when the run opens it, and stops it when the run ends; prompts go
as token ids to ``/completion``, greedy, without prompt caching, and the time of a prompt is the
request's wall-clock time, prefill included, as for every other method. Outputs are checked
against ``llama`` (our loop on the same GGUF) with that backend's tie margin.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from specdiff.bench.method_output import MethodOutput
from specdiff.verifiers.llama_cpp import DEFAULT_CONTEXT, has_amx

SPEC_TYPES = ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod")
LLAMA_SERVER_METHODS = ("llama-server", *(f"llama-server-{spec_type}" for spec_type in SPEC_TYPES))
START_SECONDS = 180  # loading the GGUF and warming up


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answer_tokens(answer: dict, end_token: int, eos: frozenset[int]) -> list[int]:
    """A ``/completion`` answer's tokens, ending with its end-of-generation token where the server
    stopped at one, as every other method's answer does: the server sometimes leaves that token
    out of ``tokens`` (then ``end_token`` is appended) and sometimes keeps it."""
    tokens = list(answer["tokens"])
    if answer.get("stop_type") == "eos" and not (tokens and tokens[-1] in eos):
        tokens.append(end_token)
    return tokens


class LlamaServerMethod:
    blockwise = False  # a server idles between requests, so it interleaves with the in-process methods

    def __init__(self, name: str, binary: str, gguf_path: Path, end_token: int, threads: int,
                 spec_type: str | None = None, eos: frozenset[int] = frozenset()):
        """``end_token``: what an answer the server ended at an end-of-generation token gets as
        its last token where the server left that token out (it does not say which it was); an
        answer that already ends with one of ``eos`` keeps it as it is."""
        if not Path(binary).is_file():
            raise FileNotFoundError(f"no llama-server binary at {binary} (--llama-server PATH; docs/backends.md "
                                    "says how to build one)")
        self.name, self.binary, self.gguf_path, self.end_token = name, binary, gguf_path, end_token
        self.eos = frozenset(eos) | {end_token}
        self.threads, self.spec_type = threads, spec_type
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.log = None

    def argv(self, port: int) -> list[str]:
        argv = [self.binary, "-m", str(self.gguf_path), "--host", "127.0.0.1", "--port", str(port),
                "-t", str(self.threads), "-tb", str(self.threads), "-c", str(DEFAULT_CONTEXT), "-np", "1"]
        if self.spec_type:
            argv += ["--spec-type", self.spec_type]
        if has_amx():  # as LlamaCppVerifier: ggml's AMX repacking crashed decodes here (see has_amx)
            argv += ["--no-repack"]
        return argv

    def open(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.argv(port), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with code {self.process.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.close()
        raise RuntimeError(f"llama-server did not answer /health within {START_SECONDS} s")

    def _log_tail(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def run(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> MethodOutput:
        if self.process is None:
            self.open()
        body = {"prompt": prompt_ids[0].tolist(), "n_predict": max_new_tokens, "temperature": 0.0, "top_k": 1,
                "cache_prompt": False, "return_tokens": True, "stream": False}
        request = urllib.request.Request(f"{self.url}/completion", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            answer = json.loads(response.read())
        seconds = time.perf_counter() - started
        return MethodOutput(answer_tokens(answer, self.end_token, self.eos), seconds)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None


def build(name: str, models, settings) -> LlamaServerMethod:
    if not settings.llama_server:
        raise FileNotFoundError(f"{name} needs a llama-server binary: --llama-server PATH (docs/backends.md)")
    verifier = models.llama_verifier  # the same GGUF and threads as the other llama methods
    spec_type = name.removeprefix("llama-server-") if name != "llama-server" else None
    # the tokenizer's EOS is the chat model's end of turn (Qwen: <|im_end|>), the one its answers end with
    end_token = models.tokenizer.eos_token_id if models.tokenizer.eos_token_id in models.eos else min(models.eos)
    return LlamaServerMethod(name, settings.llama_server, verifier.gguf_path, end_token, verifier.threads, spec_type,
                             frozenset(models.eos))
