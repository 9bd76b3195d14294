"""Bench methods on the verifier's GGUF through llama.cpp (the ``llama`` extra):

- ``llama``: plain decoding, one token per pass, through our loop on ``LlamaCppVerifier``
  (the baseline of this backend and the reference its other methods are checked against);
- ``llama-specdiff``: our tree (lookup and suffix sources, sized by this backend's measured
  verify-cost curve) on the same verifier;
- ``llama-generate``: llama-cpp-python's own greedy loop (``Llama.generate``), one token per
  pass: what our loop's overhead over llama.cpp's is measured against;
- ``llama-prompt-lookup``: llama-cpp-python's own speculative decoding, ``Llama`` with
  ``LlamaPromptLookupDecoding`` (``--prompt-lookup-tokens``, ``--prompt-lookup-ngram``; its
  defaults are 10 and 2), greedy; ``llama-prompt-lookup-tT-nN`` the same with T tokens from
  N-grams, so several settings run side by side (``-t3-n3``: the best on GSM8K-train).

The two engine methods share one llama.cpp context; each ``Llama`` method holds its own (with a
draft model ``Llama`` keeps every token's logits, ``n_ctx`` x vocabulary floats: 2.5 GB at 4096
tokens for the 151K-token Qwen vocabulary).
"""

from __future__ import annotations

import contextlib
import re
import time

import torch

from specdiff.bench.method import EngineMethod, InProcessMethod
from specdiff.bench.method_output import MethodOutput
from specdiff.tree.build import build_tree_drafter
from specdiff.verifiers.llama_cpp import DEFAULT_CONTEXT, has_amx, import_llama_cpp, tree_for_llama_cpp

LLAMA_METHODS = ("llama", "llama-specdiff", "llama-generate", "llama-prompt-lookup")
PROMPT_LOOKUP_SWEEP = re.compile(r"llama-prompt-lookup-t(\d+)-n(\d+)")  # its draft tokens and n-gram, by name


class LlamaGenerateMethod(InProcessMethod):
    """``llama_cpp.Llama.generate``, greedy, with an optional draft model (prompt lookup), its
    KV cache reset before every prompt (no prefix reuse between prompts, as for every other
    method)."""

    def __init__(self, name: str, gguf_path, eos: set[int], threads: int, draft_model=None):
        self.name, self.eos = name, eos
        llama = import_llama_cpp()
        with _unrepacked_weights_on_amx(llama):
            # logits_all: with a draft model Llama keeps every token's logits but sizes that array by
            # logits_all as passed, so without it a prompt over n_batch (512) tokens overflows it
            # (llama-cpp-python 0.3.36: "could not broadcast ... into shape (0,)")
            self.llm = llama.Llama(model_path=str(gguf_path), n_ctx=DEFAULT_CONTEXT, n_threads=threads,
                                   n_threads_batch=threads, draft_model=draft_model,
                                   logits_all=draft_model is not None, verbose=False)

    def run(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> MethodOutput:
        self.llm.reset()
        tokens: list[int] = []
        started = time.perf_counter()
        stream = self.llm.generate(prompt_ids[0].tolist(), temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                   repeat_penalty=1.0)
        for token in stream:
            tokens.append(token)  # an EOS token ends the answer and is part of it, as in every other method
            if token in self.eos or len(tokens) >= max_new_tokens:
                break
        stream.close()
        return MethodOutput(tokens, time.perf_counter() - started)


@contextlib.contextmanager
def _unrepacked_weights_on_amx(llama):
    """``Llama`` takes no ``use_extra_bufts``; on AMX CPUs (see ``has_amx``) its model
    parameters are made without weight repacking, as ``LlamaCppVerifier`` makes them."""
    if not has_amx():
        yield
        return
    module = llama.llama_cpp
    defaults = module.llama_model_default_params

    def unrepacked():
        params = defaults()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = unrepacked
    try:
        yield
    finally:
        module.llama_model_default_params = defaults


def build(name: str, models, settings):
    verifier = models.llama_verifier  # the Llama methods: the same GGUF, and the same threads
    if name == "llama-generate":
        return LlamaGenerateMethod(name, verifier.gguf_path, models.eos, verifier.threads)
    sweep = PROMPT_LOOKUP_SWEEP.fullmatch(name)
    if name == "llama-prompt-lookup" or sweep:
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding  # llama.cpp is optional

        tokens, ngram = (int(sweep.group(1)), int(sweep.group(2))) if sweep else (
            settings.prompt_lookup_tokens, settings.prompt_lookup_ngram)
        lookup = LlamaPromptLookupDecoding(max_ngram_size=ngram, num_pred_tokens=tokens)
        return LlamaGenerateMethod(name, verifier.gguf_path, models.eos, verifier.threads, lookup)
    drafter = None
    if name == "llama-specdiff":
        tree = tree_for_llama_cpp(settings.tree, plain=False)
        drafter = build_tree_drafter(tree, verifier, None, models.tokenizer, models.verify_costs(verifier))
    return EngineMethod(name, verifier, drafter, settings.engine_config(), models.eos)
