"""Which operation makes llama.cpp's multi-token passes differ from smaller ones, layer by layer.

After one prefill, scores the same chain of tokens in passes of several sizes (by default 1,
2 and 4 tokens; each pass removed from the cache before the next) and records, through
llama.cpp's eval callback, every f32 intermediate tensor of each pass. For each pair of sizes
(a < b) it compares the first ``a`` tokens' rows of every tensor that has a token axis, in the
order the graph computes them, and prints the first tensors that differ and the largest
difference of each kind of tensor: the operation where a bigger pass stops agreeing with a
smaller one.

    python scripts/llama_pass_layers.py --verifier qwen2.5-coder-1.5b-instruct --sizes 1,2,4
"""

from __future__ import annotations

import argparse
import ctypes
import re
from collections import defaultdict

import numpy as np
import torch

from specdiff.prompting import encode_prompt
from specdiff.verifiers.llama_cpp import import_llama_cpp, open_gguf

PROMPT = "Write a Python function that returns the n-th Fibonacci number, with a docstring and tests."
GGML_TYPE_F32 = 0


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` of the ggml that llama-cpp-python 0.3.36 vendors (ggml.h: 4 dims,
    10 sources, 64 bytes of op params, 64-byte names)."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


class Recorder:
    """The eval callback: while ``tensors`` is a list, every f32 tensor computed is copied into it."""

    def __init__(self, llama):
        self.tensors: list[tuple[str, np.ndarray]] | None = None
        self.callback = llama.ggml_backend_sched_eval_callback(self._on_tensor)

    def _on_tensor(self, pointer, ask, user_data) -> bool:
        if ask or self.tensors is None:
            return True  # ask: yes, every tensor (each is then computed and shown before the next)
        tensor = GgmlTensor.from_address(pointer)
        if tensor.type != GGML_TYPE_F32 or not tensor.data:
            return True
        shape = tuple(reversed(tensor.ne[:4]))
        strides = tuple(reversed(tensor.nb[:4]))
        extent = sum((n - 1) * s for n, s in zip(shape, strides)) + 4
        raw = np.ctypeslib.as_array((ctypes.c_uint8 * extent).from_address(tensor.data))
        view = np.lib.stride_tricks.as_strided(raw.view(np.float32), shape=shape, strides=strides)
        self.tensors.append((tensor.name.decode(errors="replace"), np.array(view)))
        return True


def token_rows(small: np.ndarray, large: np.ndarray, tokens: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The first ``tokens`` tokens' parts of two recordings of one tensor (the axis where only
    the pass size differs), or None where the tensor has no such axis."""
    if small.ndim != large.ndim:
        return None
    differing = [axis for axis in range(small.ndim) if small.shape[axis] != large.shape[axis]]
    if len(differing) != 1 or small.shape[differing[0]] != tokens:
        return None
    return small, np.take(large, range(tokens), axis=differing[0])


def compare(small_pass, large_pass, tokens: int) -> list[tuple[str, float]]:
    """(tensor name, largest absolute difference) in graph order, tensors matched by name."""
    large_by_name = defaultdict(list)
    for name, values in large_pass:
        large_by_name[name].append(values)
    seen: dict[str, int] = defaultdict(int)
    out = []
    for name, values in small_pass:
        index = seen[name]
        seen[name] += 1
        if index >= len(large_by_name[name]):
            continue
        pair = token_rows(values, large_by_name[name][index], tokens)
        if pair is not None:
            out.append((name, float(np.max(np.abs(pair[0] - pair[1]))) if pair[0].size else 0.0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verifier", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--show", type=int, default=8, help="first differing tensors to list per pair")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    recorder = Recorder(import_llama_cpp())
    verifier, tokenizer = open_gguf(args.verifier, eval_callback=recorder.callback)
    prompt = encode_prompt(tokenizer, PROMPT, chat=True)
    verifier.prefill(prompt)
    base = verifier.cached_length
    chain = [int(prompt[0, -1])] + tokenizer.encode("def fibonacci(n):\n    if n <", add_special_tokens=False)
    passes = {}
    for size in sizes:
        recorder.tensors = []
        verifier.score(torch.tensor([chain[:size]]))
        passes[size], recorder.tensors = recorder.tensors, None
        verifier.truncate(base)
    print(f"{args.verifier}: {len(passes[sizes[0]])} f32 tensors per pass; threads {verifier.threads}")
    for small, large in zip(sizes, sizes[1:]):
        diffs = compare(passes[small], passes[large], small)
        differing = [(name, diff) for name, diff in diffs if diff > 0]
        print(f"\npass of {small} vs pass of {large} (the first {small} token(s)): {len(diffs)} tensors compared, "
              f"{len(differing)} differ")
        for name, diff in differing[:args.show]:
            print(f"  {name}: max |diff| {diff:.3g}")
        worst = defaultdict(float)
        for name, diff in diffs:
            kind = re.sub(r"-\d+$", "", name)
            worst[kind] = max(worst[kind], diff)
        print("  largest difference by kind of tensor: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
