"""A GGUF verified through llama.cpp (llama-cpp-python's low-level API), behind the same
prefill / score / truncate / commit contract as the transformers ``Verifier``.

Why by hand: llama-cpp-python's ``Llama`` class scores one sequence and keeps logits of every
token it ever evaluated; a verification pass here is one ``llama_decode`` of a ragged trie
(the root and K candidate rows sharing prefixes) with per-token positions, sequence ids
(one per row, so a node attends to its own ancestors only) and logits at every node, and a
commit keeps one row's accepted path. Those are llama.cpp's own primitives (``llama_batch``,
``llama_memory_seq_cp`` / ``seq_rm``), which the high-level class does not expose.

llama.cpp is imported where it is used: it is an optional dependency (the ``llama`` extra).
Hidden states are not available here, so drafters that read them (DFlash) need the
transformers backend.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import AutoTokenizer

from specdiff.models.loading import load_tokenizer
from specdiff.models.prepare import gguf_file, is_prepared
from specdiff.models.registry import PACKAGED_MODELS
from specdiff.tree.config import TreeConfig
from specdiff.verifier import CommittedTokens, ScoredDrafts, build_trie

DEFAULT_CONTEXT = 4096
MAX_BATCH = 512  # tokens in one llama_decode: prefill chunks and the largest trie
MAX_ROWS = 16  # candidate rows in one pass: with several, row k is llama.cpp sequence k + 1 (0: committed)


def import_llama_cpp():
    """llama_cpp with its log quiet (it prints every tensor it loads), or a one-line error
    saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise ValueError("the llama.cpp backend needs llama-cpp-python: pip install 'specdiff[llama]' "
                         "(it compiles llama.cpp with cmake and g++, a few minutes)") from None
    _quiet_log(llama_cpp)
    return llama_cpp


@functools.cache
def _quiet_log(llama) -> object:
    """Route llama.cpp's log to nowhere; the callback is returned so the cache keeps it alive."""
    callback = llama.llama_log_callback(lambda level, text, user_data: None)
    llama.llama_log_set(callback, ctypes.c_void_p(0))
    return callback


def has_amx() -> bool:
    """Whether this CPU has Intel AMX tiles and the llama.cpp library holds ggml's AMX matrix
    product (compiled in by a native build on such a CPU). There that product, one of the
    "extra buffer types" that repack weights at load, crashed every decode with a segfault
    (llama-cpp-python 0.3.36 on a 2-core Intel Xeon with AMX; its own ``Llama`` class alike), so
    weights stay unrepacked; elsewhere the repacking stays, which makes passes faster. A build
    without AMX code (docs/backends.md) keeps the repacking on AMX CPUs too."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu_has_amx = any(line.startswith("flags") and "amx_tile" in line.split() for line in cpuinfo)
    except OSError:
        return False
    return cpu_has_amx and _library_has_amx()


@functools.cache
def _library_has_amx() -> bool:
    import llama_cpp  # llama.cpp is optional

    try:
        library = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
        return bool(library.ggml_cpu_has_amx_int8())
    except (OSError, AttributeError):  # another layout: assume the AMX product is there
        return True


class LlamaCppVerifier:
    """Keeps, in sequence 0 of llama.cpp's KV cache, every committed token except the last,
    which is the root of the next scoring pass (as ``Verifier`` does)."""

    # llama.cpp is not batch-invariant: a token's logits in a pass of several tokens differ from
    # its logits in a one-token pass, so a near-tie can flip between a speculative and a plain
    # run. The top-2 margin moved by up to 0.96 (scripts/llama_batch_noise.py, docs/backends.md).
    tie_margin = 1.2

    def __init__(self, gguf_path: str | Path, context: int = DEFAULT_CONTEXT, threads: int | None = None,
                 eval_callback=None):
        """``eval_callback``: a ``llama_cpp.ggml_backend_sched_eval_callback`` that sees every
        intermediate tensor of every pass (``scripts/llama_pass_layers.py``); None in normal use."""
        self._llama = llama = import_llama_cpp()
        path = Path(gguf_path)
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        llama.llama_backend_init()
        model_params = llama.llama_model_default_params()
        model_params.use_extra_bufts = not has_amx()  # see has_amx
        self._model = llama.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise ValueError(f"{path}: llama.cpp cannot load it as a GGUF model")
        context_params = llama.llama_context_default_params()
        context_params.n_ctx = context
        context_params.n_batch = context_params.n_ubatch = MAX_BATCH
        context_params.n_seq_max = MAX_ROWS + 1
        context_params.kv_unified = True  # rows of one trie share the prefix's cells
        context_params.n_threads = context_params.n_threads_batch = threads or os.cpu_count() or 1
        if eval_callback is not None:
            context_params.cb_eval, self._eval_callback = eval_callback, eval_callback  # kept alive with the context
        self._context = llama.llama_init_from_model(self._model, context_params)
        if not self._context:
            raise ValueError(f"{path}: llama.cpp cannot make a context of {context} tokens for it")
        self._memory = llama.llama_get_memory(self._context)
        self._batch = llama.llama_batch_init(MAX_BATCH, 0, MAX_ROWS + 1)
        self.vocab_size = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(self._model))
        self.max_length = min(context, llama.llama_model_n_ctx_train(self._model))
        self.threads = context_params.n_threads
        self.gguf_path = path
        self._length = 0
        description = ctypes.create_string_buffer(256)
        llama.llama_model_desc(self._model, description, len(description))
        self.cost_identity = (f"llama.cpp {llama.__version__} {description.value.decode(errors='replace')} "
                              f"{llama.llama_model_n_params(self._model)} parameters "
                              f"{llama.llama_model_size(self._model)} bytes | {self.threads} threads | "
                              f"repacked {model_params.use_extra_bufts}")

    def __del__(self) -> None:
        llama = getattr(self, "_llama", None)
        if llama is None:
            return
        if getattr(self, "_batch", None) is not None:
            llama.llama_batch_free(self._batch)
        if getattr(self, "_context", None):
            llama.llama_free(self._context)
        if getattr(self, "_model", None):
            llama.llama_model_free(self._model)

    @property
    def cached_length(self) -> int:
        return self._length

    def _decode(self, tokens: list[int], positions: list[int], seq_ids: list[list[int]], outputs: bool) -> None:
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, (token, position, seqs) in enumerate(zip(tokens, positions, seq_ids)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, len(seqs), outputs
            for j, seq in enumerate(seqs):
                batch.seq_id[i][j] = seq
        status = self._llama.llama_decode(self._context, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} (context full or out of memory?)")

    def prefill(self, tokens: Tensor, feature_layers=()) -> None:
        """tokens [1, length]: caches all but the last token."""
        if feature_layers:
            raise ValueError("the llama.cpp backend has no hidden states: drafters that read them (DFlash) need "
                             "the transformers backend")
        self._llama.llama_memory_clear(self._memory, True)
        ids = tokens[0, :-1].tolist()
        for start in range(0, len(ids), MAX_BATCH):
            chunk = ids[start:start + MAX_BATCH]
            self._decode(chunk, list(range(start, start + len(chunk))), [[0]] * len(chunk), outputs=False)
        self._length = len(ids)

    def score(self, candidates: Tensor, feature_layers=(), lengths: Tensor | None = None) -> ScoredDrafts:
        """candidates [K, 1 + gamma] (column 0: the last committed token) in one ``llama_decode``
        with logits at every trie node; ``lengths`` [K]: draft tokens per row when ragged."""
        if feature_layers:
            raise ValueError("the llama.cpp backend has no hidden states")
        trie = build_trie(candidates, lengths)
        rows, num_nodes, past = candidates.shape[0], len(trie.tokens), self._length
        if rows > MAX_ROWS or num_nodes > MAX_BATCH:
            raise ValueError(f"a pass holds at most {MAX_ROWS} rows and {MAX_BATCH} nodes, got {rows} and {num_nodes}")
        row_lengths = [candidates.shape[1] - 1] * rows if lengths is None else lengths.tolist()
        members: list[list[int]] = [[] for _ in range(num_nodes)]
        node_of = trie.node_of.tolist()
        for row in range(rows):
            for depth in range(row_lengths[row] + 1):
                members[node_of[row][depth]].append(_sequence(row, rows))
        if rows > 1:  # every row sees the committed prefix
            for row in range(rows):
                self._llama.llama_memory_seq_cp(self._memory, 0, _sequence(row, rows), -1, -1)
        self._decode(trie.tokens.tolist(), (past + trie.depths).tolist(), members, outputs=True)
        pointer = self._llama.llama_get_logits(self._context)
        logits = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                       shape=(num_nodes, self.vocab_size))
        logits = torch.from_numpy(logits.copy())  # [num_nodes, vocab]
        self._length = past + num_nodes
        return ScoredDrafts(trie, past, logits[trie.node_of], None)

    def truncate(self, length: int) -> None:
        """Forget every cached token after the first ``length`` (a scored pass that is not committed)."""
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} tokens to {length}")
        self._llama.llama_memory_seq_rm(self._memory, 0, length, -1)
        self._drop_rows()
        self._length = length

    def _drop_rows(self) -> None:
        for sequence in range(1, MAX_ROWS + 1):
            self._llama.llama_memory_seq_rm(self._memory, sequence, -1, -1)

    def commit(self, scored: ScoredDrafts, candidate: int, num_accepted: int) -> CommittedTokens:
        """Keep the root and the first ``num_accepted`` draft tokens of ``candidate`` in sequence 0."""
        trie, base = scored.trie, scored.past_length
        if self._length != base + len(trie.tokens):
            raise ValueError("commit() takes the result of the latest score() call, once")
        end = base + 1 + num_accepted
        memory, llama = self._memory, self._llama
        rows = trie.node_of.shape[0]
        if rows > 1:  # the chosen row's path joins sequence 0; the rows' cells are freed
            llama.llama_memory_seq_cp(memory, _sequence(candidate, rows), 0, base, end)
            self._drop_rows()
        else:
            llama.llama_memory_seq_rm(memory, 0, end, -1)
        self._length = end
        keep_nodes = trie.node_of[candidate, : 1 + num_accepted]
        return CommittedTokens(trie.tokens[keep_nodes].tolist(), None)


def _sequence(row: int, rows: int) -> int:
    """The llama.cpp sequence of candidate ``row`` in a pass of ``rows`` rows: a lone chain
    extends sequence 0 itself; several rows get one sequence each."""
    return 0 if rows == 1 else row + 1


def open_gguf(spec: str, context: int = DEFAULT_CONTEXT, threads: int | None = None, eval_callback=None):
    """(verifier, tokenizer) for a named packaged model (its GGUF as shipped, never converted
    to fp32) or a ``.gguf`` file. The tokenizer is the prepared folder's where the model was
    prepared, else transformers' reading of the GGUF's own vocabulary."""

    if spec in PACKAGED_MODELS:
        path = gguf_file(spec)
        if is_prepared(PACKAGED_MODELS[spec]):
            return LlamaCppVerifier(path, context, threads, eval_callback), load_tokenizer(spec)
    elif Path(spec).is_file() and spec.endswith(".gguf"):
        path = Path(spec)
    else:
        raise ValueError(f"--backend llama-cpp takes a named model ({', '.join(PACKAGED_MODELS)}) or a .gguf file, "
                         f"got {spec!r}")
    verifier = LlamaCppVerifier(path, context, threads, eval_callback)
    return verifier, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def tree_for_llama_cpp(tree: TreeConfig, plain: bool) -> TreeConfig:
    """The tree settings for the llama.cpp backend: the default sources without the diffusion
    drafter, whose draft call costs more than its drafts save on this backend's steep cost
    curve (docs/backends.md); asked for by name (``--sources ...,diffusion``), it runs, priced
    by the policy like every source."""
    if plain or "diffusion" not in tree.source_names or tree.sources != TreeConfig.sources:
        return tree
    return dataclasses.replace(tree, sources=",".join(name for name in tree.source_names if name != "diffusion"))
