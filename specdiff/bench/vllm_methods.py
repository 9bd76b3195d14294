"""Bench methods that decode through vLLM's offline engine (``LLM.generate``), greedy.

- ``vllm``: plain decoding (the reference the other vLLM methods are checked against:
  vLLM's kernels round differently from transformers', so equality is checked within
  the engine);
- ``vllm-ngram``: vLLM's prompt lookup;
- ``vllm-dflash``: vLLM's native DFlash proposer with ``--dflash-drafter``;
- ``vllm-specdiff``: the standalone diffusion drafter (``--specdiff2-drafter``) as a
  ``custom_class`` proposer.

An engine holds its own copy of the verifier, so two cannot share this machine's memory:
each vLLM method runs as one block over all prompts (``open`` ... ``close``), not
interleaved prompt by prompt like the in-process methods. Acceptance comes from vLLM's
own speculative-decoding counters, read before and after each request.
"""

from __future__ import annotations

import gc
import os
import time

import torch
from transformers import AutoConfig

from specdiff.bench.method_output import MethodOutput
from specdiff.models.loading import resolve_model_folder
from specdiff.prompting import truncate_at_eos
from specdiff.serving.environment import offline_engine  # imports vLLM itself only when called
from specdiff.serving.speculative import speculative_setup
from specdiff.tree.config import TreeConfig

VLLM_METHODS = ("vllm", "vllm-ngram", "vllm-dflash", "vllm-specdiff")


def spec_counters(llm) -> tuple[int, list[int]]:
    """(drafts proposed, accepted tokens per draft position) so far in this process."""
    drafts, per_position = 0, []
    for metric in llm.get_metrics():
        if metric.name == "vllm:spec_decode_num_drafts":
            drafts += metric.value
        elif metric.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            per_position = [a + b for a, b in zip(per_position, metric.values)] if per_position else list(metric.values)
    return drafts, per_position


class VllmMethod:
    blockwise = True  # run over all prompts between open() and close(), not interleaved

    def __init__(self, name: str, verifier: str, speculative: dict | None, environment: dict[str, str],
                 eos: set[int], max_model_len: int = 4096):
        self.name, self.verifier, self.speculative = name, verifier, speculative
        self.environment, self.eos, self.max_model_len = environment, eos, max_model_len
        self.llm = None

    def open(self) -> None:
        os.environ.update(self.environment)  # the custom proposer reads its drafter from here
        self.llm = offline_engine(self.verifier, max_model_len=self.max_model_len, speculative_config=self.speculative,
                                  disable_log_stats=False)

    def close(self) -> None:
        del self.llm
        self.llm = None
        gc.collect()

    def run(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> MethodOutput:
        from vllm import SamplingParams, TokensPrompt  # vLLM is optional

        drafts_before, accepted_before = spec_counters(self.llm)
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        started = time.perf_counter()
        output = self.llm.generate([TokensPrompt(prompt_token_ids=prompt_ids[0].tolist())], params, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens, _ = truncate_at_eos(list(output[0].outputs[0].token_ids), self.eos)
        drafts, accepted = spec_counters(self.llm)
        if self.speculative is None:
            return MethodOutput(tokens, seconds, accepted_lengths=[1] * len(tokens))
        per_position = [a - b for a, b in zip(accepted, accepted_before + [0] * len(accepted))]
        return MethodOutput(tokens, seconds, spec_counts={"drafts": drafts - drafts_before,
                                                          "accepted_per_position": per_position})


def build(name: str, models, settings) -> VllmMethod:
    """The bench method ``name`` (one of ``VLLM_METHODS``): its drafter checked as ``serve``
    checks it, before any engine starts."""
    drafter = {"vllm": "none", "vllm-ngram": "ngram", "vllm-dflash": settings.dflash_drafter,
               "vllm-specdiff": settings.specdiff2_drafter}[name]
    if not drafter:
        raise FileNotFoundError(f"no drafter given for {name} (--dflash-drafter PATH)")
    gamma = {"vllm-ngram": settings.prompt_lookup_tokens, "vllm-dflash": settings.gamma_dflash,
             "vllm-specdiff": settings.gamma}.get(name)
    verifier_config = AutoConfig.from_pretrained(resolve_model_folder(models.verifier_spec))
    setup = speculative_setup(drafter, verifier_config, gamma,
                              sources=settings.tree.sources if name == "vllm-specdiff" else TreeConfig.sources,
                              verifier_tokenizer=models.tokenizer)
    return VllmMethod(name, models.verifier_spec, setup.config, setup.environment, models.eos)
