"""The methods under test, all against the same verifier, behind one ``run`` call.

- ``ar``: plain greedy decoding through transformers' ``generate`` with transformers' own
  linear kernels (the reference: what users run today).
- ``ar-engine``: plain decoding through our own loop and our kernels (the second baseline:
  what the drafter adds, kernels aside).
- ``hf-assisted``: transformers' assisted generation with the 0.5B as assistant.
- ``prompt-lookup``: transformers' prompt lookup decoding.
- ``sd-ar``: our engine with the 0.5B autoregressive drafter.
- ``specdiff``: the default decoding path: one verified tree of context-lookup, suffix-index
  (earlier outputs) and aligned-diffusion drafts, sized each step by the cost model
  (``specdiff/tree``).
- ``specdiff-v1``: our engine with a diffusion drafter adapted but not aligned (SpecDiff v1).
- ``specdiff2``: the aligned diffusion drafter alone plus self-selection (K drafts);
  ``specdiff2-kN`` is the same with K = N and ``specdiff2-kN-gG`` also with gamma = G,
  for sweeps over K and gamma in one run; a ``-int8`` / ``-fp32`` suffix sets the drafter's
  weights (default: ``DrafterConfig.weights``).
- ``dflash``: our engine with a DFlash-layout drafter conditioned on the verifier's hidden
  states (``--dflash-drafter``; argmax drafts at ``--gamma-dflash``); ``dflash-kN`` and
  ``dflash-kN-gG`` as for specdiff2.
- ``vllm``, ``vllm-ngram``, ``vllm-dflash``, ``vllm-specdiff``: the same through vLLM's
  offline engine (``bench/vllm_methods.py``; needs the vllm extra).
- ``llama``, ``llama-specdiff``, ``llama-generate``, ``llama-prompt-lookup``: the verifier's GGUF
  through llama.cpp (``bench/llama_methods.py``; needs the llama extra).
- ``llama-server``, ``llama-server-ngram-*``: llama.cpp's own server and its n-gram speculative
  decoding (``bench/llama_server_methods.py``; needs ``--llama-server PATH``).

Every method is a ``Method`` built by one entry of ``BUILDERS`` (name -> builder); the models
they share are loaded once, on first use, by ``BenchModels``.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from specdiff.bench import llama_methods, llama_server_methods, vllm_methods
from specdiff.bench.method import EngineMethod, InProcessMethod, Method
from specdiff.bench.method_output import MethodOutput
from specdiff.bench.model_cache import BenchModels
from specdiff.drafters import AutoregressiveDrafter
from specdiff.drafters.loading import DrafterConfig
from specdiff.drafters.registry import DEFAULT_DRAFTER
from specdiff.engine import DecodingConfig
from specdiff.linear_kernels import PLAIN, kernel_plan
from specdiff.prompting import truncate_at_eos
from specdiff.sampling import SamplingConfig
from specdiff.tree.build import build_tree_drafter
from specdiff.tree.config import TreeConfig

METHODS = ("ar", "ar-engine", "hf-assisted", "prompt-lookup", "sd-ar", "specdiff", "specdiff-v1", "specdiff2", "dflash")


class HFGenerateMethod(InProcessMethod):
    """transformers' ``generate`` with optional assistant / prompt lookup; greedy, or pure
    temperature sampling (no top-k/top-p, like our engine's) when ``temperature`` > 0.
    Runs on transformers' own linear kernels (``PLAIN``), as users run it."""

    def __init__(self, name: str, model, eos: set[int], temperature: float = 0.0, seed: int = 0, **generate_kwargs):
        self.name, self.model, self.eos, self.kwargs = name, model, sorted(eos), generate_kwargs
        self.temperature, self.seed = temperature, seed

    @torch.inference_mode()
    def run(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> MethodOutput:
        sampling = dict(do_sample=False)
        if self.temperature > 0:
            sampling = dict(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0)
            torch.manual_seed(self.seed)  # generate() draws from the global generator; it takes no other
        models = [self.model, *([self.kwargs["assistant_model"]] if "assistant_model" in self.kwargs else [])]
        with contextlib.ExitStack() as plain_kernels:
            for model in models:
                plain_kernels.enter_context(kernel_plan(model, PLAIN))
            started = time.perf_counter()
            output = self.model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                         max_new_tokens=max_new_tokens, eos_token_id=self.eos,
                                         pad_token_id=self.eos[0], repetition_penalty=1.0, **sampling, **self.kwargs)
            seconds = time.perf_counter() - started
        tokens = output[0, prompt_ids.shape[1]:].tolist()
        tokens, _ = truncate_at_eos(tokens, self.eos)
        accepted = [1] * len(tokens) if not self.kwargs else None
        return MethodOutput(tokens, seconds, accepted)


@dataclass(frozen=True)
class MethodSettings:
    gamma_ar: int = 5  # draft length of the autoregressive drafter
    gamma: int = DecodingConfig.gamma  # draft length of the diffusion drafters
    num_drafts: int = 1  # K for specdiff2: on a 2-core CPU every K > 1 measured slower (docs/drafters.md)
    draft_temperature: float = 1.0  # drafter temperature for specdiff2 (K > 1, or any K when sampling)
    draft_top_k: int = 0  # specdiff2's sampled drafts from each slot's k most likely tokens (reference: 64; 0 = all)
    argmax_candidate: bool = True  # greedy specdiff2 with K > 1: candidate 0 is the drafter's argmax draft
    temperature: float = 0.0  # the verifier's: 0 is greedy (outputs checked for equality), > 0 samples
    seed: int = 0  # sampling seed, the same for every method and prompt
    prompt_lookup_tokens: int = 10  # tokens prompt lookup drafts (transformers', vLLM's and llama.cpp's)
    prompt_lookup_ngram: int = 2  # longest n-gram llama-cpp-python's prompt lookup matches (its default)
    llama_server: str = ""  # a llama-server binary, for the llama-server methods (optional)
    assistant: str = "qwen2.5-coder-0.5b-instruct"
    specdiff_v1_drafter: str = "specdiff-qwen2.5-coder-1.5b-adapted"  # adapted, not aligned
    specdiff2_drafter: str = DEFAULT_DRAFTER
    dflash_drafter: str = "specdiff-dflash-qwen2.5-coder-1.5b"  # a DFlash-layout drafter (folder or shipped name)
    gamma_dflash: int = 8  # draft length of the DFlash drafter
    tree: TreeConfig = field(default_factory=TreeConfig)  # the sources and limits of the specdiff method

    def __post_init__(self) -> None:
        for flag, value in (("--temperature", self.temperature), ("--draft-temperature", self.draft_temperature)):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{flag} must be a finite number >= 0 (0 = greedy), got {value}")

    def engine_config(self, **fields) -> DecodingConfig:
        """Our engine's settings for a method: the verifier's sampling and seed, and ``fields``."""
        return DecodingConfig(sampling=SamplingConfig(temperature=self.temperature), seed=self.seed, **fields)

    @property
    def hf_sampling(self) -> dict:
        return dict(temperature=self.temperature, seed=self.seed)


Builder = Callable[[str, BenchModels, MethodSettings], Method]
SWEEP_METHOD = re.compile(r"(specdiff2|dflash)-k(\d+)(?:-g(\d+))?(?:-(int8|fp32))?")  # drafter weights


def drafter_method(name: str, models: BenchModels, settings: MethodSettings) -> Method:
    """Our engine with a diffusion or DFlash drafter; ``specdiff`` puts it in the tree."""
    sweep = SWEEP_METHOD.fullmatch(name)  # specdiff2 / dflash with explicit K (and gamma, weights)
    family = sweep.group(1) if sweep else name
    spec = {"specdiff": settings.specdiff2_drafter, "specdiff-v1": settings.specdiff_v1_drafter,
            "specdiff2": settings.specdiff2_drafter, "dflash": settings.dflash_drafter}[family]
    if not spec:
        raise FileNotFoundError(f"no drafter given for {name} (--{family}-drafter PATH)")
    weights = {"int8": "int8", "fp32": "float32", None: DrafterConfig.weights}[sweep.group(4) if sweep else None]
    drafter = models.drafter(spec, weights)
    num_drafts = int(sweep.group(2)) if sweep else settings.num_drafts if name == "specdiff2" else 1
    sampled_drafts = num_drafts > 1 or settings.temperature > 0
    draft_sampling = SamplingConfig(temperature=settings.draft_temperature, top_k=settings.draft_top_k) \
        if sampled_drafts else SamplingConfig()
    default_gamma = settings.gamma_dflash if family == "dflash" else settings.gamma
    gamma = int(sweep.group(3)) if sweep and sweep.group(3) else default_gamma
    config = settings.engine_config(gamma=gamma, num_drafts=num_drafts, draft_sampling=draft_sampling,
                                    argmax_candidate=settings.argmax_candidate)
    if name == "specdiff" and settings.tree.uses_tree:
        verifier = models.verifier
        drafter = build_tree_drafter(settings.tree, verifier, drafter, models.tokenizer, models.verify_costs(verifier))
    return EngineMethod(name, models.verifier, drafter, config, models.eos)


BUILDERS: dict[str, Builder] = {
    "ar": lambda name, models, s: HFGenerateMethod(name, models.model, models.eos, **s.hf_sampling),
    "ar-engine": lambda name, models, s: EngineMethod(name, models.verifier, None, s.engine_config(), models.eos),
    "hf-assisted": lambda name, models, s: HFGenerateMethod(
        name, models.model, models.eos, **s.hf_sampling, assistant_model=models.causal_lm(s.assistant)[0]),
    "prompt-lookup": lambda name, models, s: HFGenerateMethod(
        name, models.model, models.eos, **s.hf_sampling, prompt_lookup_num_tokens=s.prompt_lookup_tokens),
    "sd-ar": lambda name, models, s: EngineMethod(
        name, models.verifier, AutoregressiveDrafter(models.causal_lm(s.assistant)[0]),
        s.engine_config(gamma=s.gamma_ar), models.eos),
    **{name: drafter_method for name in ("specdiff", "specdiff-v1", "specdiff2", "dflash")},
    **{name: vllm_methods.build for name in vllm_methods.VLLM_METHODS},
    **{name: llama_methods.build for name in llama_methods.LLAMA_METHODS},
    **{name: llama_server_methods.build for name in llama_server_methods.LLAMA_SERVER_METHODS},
}


def builder_for(name: str) -> Builder:
    if name in BUILDERS:
        return BUILDERS[name]
    sweep = SWEEP_METHOD.fullmatch(name)
    if sweep:
        return BUILDERS[sweep.group(1)]
    if llama_methods.PROMPT_LOOKUP_SWEEP.fullmatch(name):
        return llama_methods.build
    raise ValueError(f"unknown method {name!r}; known: {', '.join(BUILDERS)}, specdiff2-kN[-gG][-int8|-fp32], "
                     "dflash-kN[-gG][-int8|-fp32], llama-prompt-lookup-tT-nN")


def check_method_names(names: list[str]) -> None:
    if not names:
        raise ValueError(f"no method given; known: {', '.join(BUILDERS)}")
    for name in names:
        builder_for(name)


def build_methods(names: list[str], models: BenchModels, settings: MethodSettings) -> tuple[list[Method], dict[str, str]]:
    """The requested methods that can run here, and a reason for each that cannot."""
    check_method_names(names)
    methods, unavailable = [], {}
    for name in names:
        try:
            methods.append(builder_for(name)(name, models, settings))
        except (FileNotFoundError, ValueError, RuntimeError) as error:
            unavailable[name] = str(error).splitlines()[0]
    return methods, unavailable
