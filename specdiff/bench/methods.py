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
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
from dataclasses import dataclass, field

import torch

from specdiff.bench.method_output import MethodOutput
from specdiff.bench.vllm_methods import VLLM_METHODS, VllmMethod
from specdiff.drafters.registry import DEFAULT_DRAFTER
from specdiff.engine import DecodingConfig, generate
from specdiff.models.linear_kernels import PLAIN, kernel_plan
from specdiff.models.registry import DEFAULT_VERIFIER
from specdiff.prompting import truncate_at_eos
from specdiff.sampling import SamplingConfig
from specdiff.tree.config import TreeConfig
from specdiff.verifier import Verifier

METHODS = ("ar", "ar-engine", "hf-assisted", "prompt-lookup", "sd-ar", "specdiff", "specdiff-v1", "specdiff2", "dflash")


class HFGenerateMethod:
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


class EngineMethod:
    """Our decoding loop with a drafter (None: plain decoding)."""

    def __init__(self, name: str, verifier: Verifier, drafter, config: DecodingConfig, eos: set[int]):
        self.name, self.verifier, self.drafter, self.config, self.eos = name, verifier, drafter, config, eos

    def run(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> MethodOutput:
        config = dataclasses.replace(self.config, max_new_tokens=max_new_tokens)
        result = generate(prompt_ids, self.verifier, self.drafter, config, self.eos)
        return MethodOutput(
            result.tokens, result.seconds,
            accepted_lengths=[len(s.new_tokens) for s in result.steps],
            drafted=[s.drafted for s in result.steps],
            draft_seconds=sum(s.draft_seconds for s in result.steps),
            verify_seconds=sum(s.verify_seconds for s in result.steps),
            candidates=[s.candidate for s in result.steps],
            step_verify_seconds=[round(s.verify_seconds, 5) for s in result.steps],
            nodes=[s.nodes for s in result.steps],
            sources=[s.source for s in result.steps],
            plans=[s.plan for s in result.steps] if any(s.plan for s in result.steps) else None,
        )


@dataclass(frozen=True)
class MethodSettings:
    gamma_ar: int = 5  # draft length of the autoregressive drafter
    gamma: int = DecodingConfig.gamma  # draft length of the diffusion drafters
    num_drafts: int = 1  # K for specdiff2: on a 2-core CPU every K > 1 measured slower (README, "Choosing gamma and K")
    draft_temperature: float = 1.0  # drafter temperature for specdiff2 (K > 1, or any K when sampling)
    draft_top_k: int = 0  # specdiff2's sampled drafts from each slot's k most likely tokens (reference: 64; 0 = all)
    argmax_candidate: bool = True  # greedy specdiff2 with K > 1: candidate 0 is the drafter's argmax draft
    temperature: float = 0.0  # the verifier's: 0 is greedy (outputs checked for equality), > 0 samples
    seed: int = 0  # sampling seed, the same for every method and prompt
    prompt_lookup_tokens: int = 10
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


SWEEP_METHOD = re.compile(r"(specdiff2|dflash)-k(\d+)(?:-g(\d+))?(?:-(int8|fp32))?")  # drafter weights


def check_method_names(names: list[str]) -> None:
    if not names:
        raise ValueError(f"no method given; known: {', '.join(METHODS + VLLM_METHODS)}")
    for name in names:
        if name not in METHODS + VLLM_METHODS and not SWEEP_METHOD.fullmatch(name):
            raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS + VLLM_METHODS)}, "
                             "specdiff2-kN[-gG][-int8|-fp32], dflash-kN[-gG][-int8|-fp32]")


def vllm_method(name: str, verifier: str, verifier_config, eos: set[int], settings: MethodSettings):
    from specdiff.models.loading import load_tokenizer
    from specdiff.serving.speculative import speculative_setup

    drafter = {"vllm": "none", "vllm-ngram": "ngram", "vllm-dflash": settings.dflash_drafter,
               "vllm-specdiff": settings.specdiff2_drafter}[name]
    if not drafter:
        raise FileNotFoundError(f"no drafter given for {name} (--dflash-drafter PATH)")
    gamma = {"vllm-ngram": settings.prompt_lookup_tokens, "vllm-dflash": settings.gamma_dflash,
             "vllm-specdiff": settings.gamma}.get(name)
    setup = speculative_setup(drafter, verifier_config, gamma,
                              sources=settings.tree.sources if name == "vllm-specdiff" else TreeConfig.sources,
                              verifier_tokenizer=load_tokenizer(verifier))
    return VllmMethod(name, verifier, setup.config, setup.environment, eos)


def build_methods(names: list[str], model, tokenizer, settings: MethodSettings,
                  verifier_spec: str = DEFAULT_VERIFIER) -> tuple[list, dict[str, str]]:
    """The requested methods that can run here, and a reason for each that cannot."""
    from specdiff.drafters import AutoregressiveDrafter
    from specdiff.drafters.loading import DrafterConfig, load_drafter
    from specdiff.tree.build import build_tree_drafter
    from specdiff.tree.costs import measure_verify_costs

    check_method_names(names)
    from specdiff.models.loading import check_same_tokenizer, load_causal_lm
    from specdiff.prompting import eos_token_ids

    eos = eos_token_ids(model, tokenizer)
    verifier = Verifier(model)
    greedy = SamplingConfig()
    output_sampling = SamplingConfig(temperature=settings.temperature)
    hf = dict(temperature=settings.temperature, seed=settings.seed)

    def engine_config(**fields) -> DecodingConfig:
        return DecodingConfig(sampling=output_sampling, seed=settings.seed, **fields)
    methods, unavailable = [], {}
    assistant = None
    drafters: dict = {}  # one network per drafter spec, shared by the methods that use it
    base_models: dict = {}  # one copy of each base model (the 0.5B), shared by the assistant and the drafters
    costs = None  # the verifier's cost table, measured once for the tree methods
    for name in names:
        k_suffix = SWEEP_METHOD.fullmatch(name)  # specdiff2 with explicit K (and gamma)
        try:
            if name in ("hf-assisted", "sd-ar") and assistant is None:
                if (settings.assistant, "float32") not in base_models:
                    base_models[(settings.assistant, "float32")] = load_causal_lm(settings.assistant)
                assistant, assistant_tokenizer = base_models[(settings.assistant, "float32")]
                check_same_tokenizer(tokenizer, assistant_tokenizer)
            if name == "ar":
                methods.append(HFGenerateMethod(name, model, eos, **hf))
            elif name == "ar-engine":
                methods.append(EngineMethod(name, verifier, None, engine_config(), eos))
            elif name == "hf-assisted":
                methods.append(HFGenerateMethod(name, model, eos, **hf, assistant_model=assistant))
            elif name == "prompt-lookup":
                methods.append(HFGenerateMethod(name, model, eos, **hf,
                                                prompt_lookup_num_tokens=settings.prompt_lookup_tokens))
            elif name.startswith("vllm"):
                methods.append(vllm_method(name, verifier_spec, model.config, eos, settings))
            elif name == "sd-ar":
                methods.append(EngineMethod(name, verifier, AutoregressiveDrafter(assistant),
                                            engine_config(gamma=settings.gamma_ar), eos))
            else:
                family = k_suffix.group(1) if k_suffix else name
                spec = {"specdiff": settings.specdiff2_drafter, "specdiff-v1": settings.specdiff_v1_drafter,
                        "specdiff2": settings.specdiff2_drafter, "dflash": settings.dflash_drafter}[family]
                if not spec:
                    raise FileNotFoundError(f"no drafter given for {name} (--{family}-drafter PATH)")
                suffix = k_suffix.group(4) if k_suffix else None
                weights = {"int8": "int8", "fp32": "float32", None: DrafterConfig.weights}[suffix]
                if (spec, weights) not in drafters:
                    drafters[(spec, weights)] = load_drafter(spec, DrafterConfig(weights=weights), verifier_model=model,
                                                             base_models=base_models, verifier_tokenizer=tokenizer)[0]
                drafter = drafters[(spec, weights)]
                num_drafts = int(k_suffix.group(2)) if k_suffix else settings.num_drafts if name == "specdiff2" else 1
                sampled_drafts = num_drafts > 1 or settings.temperature > 0
                draft_sampling = SamplingConfig(temperature=settings.draft_temperature, top_k=settings.draft_top_k) \
                    if sampled_drafts else greedy
                default_gamma = settings.gamma_dflash if family == "dflash" else settings.gamma
                gamma = int(k_suffix.group(3)) if k_suffix and k_suffix.group(3) else default_gamma
                config = engine_config(gamma=gamma, num_drafts=num_drafts, draft_sampling=draft_sampling,
                                       argmax_candidate=settings.argmax_candidate)
                if name == "specdiff" and settings.tree.uses_tree:
                    if costs is None:
                        costs = measure_verify_costs(verifier, verifier.vocab_size)
                    drafter = build_tree_drafter(settings.tree, verifier, drafter, tokenizer, costs)
                methods.append(EngineMethod(name, verifier, drafter, config, eos))
        except (FileNotFoundError, ValueError, RuntimeError) as error:
            unavailable[name] = str(error).splitlines()[0]
    return methods, unavailable
