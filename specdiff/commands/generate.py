"""``specdiff generate``: model and decoding flags, loading the verifier and drafter, streaming text."""

from __future__ import annotations

import argparse
import contextlib
import json
import time

from specdiff.drafters.registry import DEFAULT_DRAFTER
from specdiff.models.registry import DEFAULT_VERIFIER

BACKENDS = ("transformers", "llama-cpp")


def add_decoding_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``DecodingConfig`` and of the verifier's ``SamplingConfig``, from the dataclasses."""
    from specdiff.config_args import add_dataclass_args
    from specdiff.engine import DecodingConfig
    from specdiff.sampling import SamplingConfig

    add_dataclass_args(parser, DecodingConfig, skip=("sampling", "draft_sampling"))
    add_dataclass_args(parser, SamplingConfig)
    parser.add_argument("--draft-temperature", type=float, default=None,
                        help="drafter temperature (default: the verifier's)")
    parser.add_argument("--draft-top-k", type=int, default=0,
                        help="sampled drafts come from each slot's k most likely tokens (0 = all; the SpecDiff-2 "
                             "reference drafts with --draft-temperature 1 --draft-top-k 64)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    from specdiff.config_args import add_dataclass_args
    from specdiff.drafters.loading import DrafterConfig

    parser.add_argument("--verifier", default=DEFAULT_VERIFIER, help="named model, local folder or Hub id")
    parser.add_argument("--drafter", default=DEFAULT_DRAFTER,
                        help="named drafter, saved diffusion drafter folder, DFlash-layout folder, causal LM, "
                             "or 'none' for plain decoding (no tree, no lookup)")
    add_dataclass_args(parser, DrafterConfig, prefix="drafter_")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--backend", default="transformers", choices=BACKENDS,
                        help="transformers: the verifier in PyTorch (fp32 from the GGUF); llama-cpp: the GGUF itself "
                             "through llama.cpp (pip install 'specdiff[llama]'; --sources lookup,suffix)")
    from specdiff.tree.config import add_tree_args

    add_tree_args(parser)


@contextlib.contextmanager
def naming_flag(flag: str):
    """Prefix a setting's ValueError with the command-line flag that carried it."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def decoding_config(args):
    from specdiff.config_args import dataclass_from_args
    from specdiff.engine import DecodingConfig
    from specdiff.sampling import SamplingConfig

    with naming_flag("--temperature/--top-k/--top-p"):
        sampling = dataclass_from_args(SamplingConfig, args)
    draft_sampling = None
    if args.draft_temperature is not None or args.draft_top_k:
        temperature = sampling.temperature if args.draft_temperature is None else args.draft_temperature
        with naming_flag("--draft-temperature"):
            SamplingConfig(temperature=temperature)
        with naming_flag("--draft-top-k"):
            draft_sampling = SamplingConfig(temperature=temperature, top_k=args.draft_top_k)
    return dataclass_from_args(DecodingConfig, args, sampling=sampling, draft_sampling=draft_sampling)


def load_pair(args, config, load_drafter_model: bool = True):
    """(verifier model, tokenizer, drafter or None); checks the tokenizers match. Settings
    (``config``: the ``DecodingConfig``) and the drafter spec are checked before any model loads."""
    from specdiff.config_args import dataclass_from_args
    from specdiff.drafters.loading import DrafterConfig, check_drafter_spec, load_drafter
    from specdiff.models.loading import check_same_tokenizer, load_causal_lm, load_tokenizer

    drafter_config = dataclass_from_args(DrafterConfig, args, prefix="drafter_")
    check_before_loading(args, config)
    wanted = load_drafter_model and args.drafter.lower() != "none"
    if wanted:
        check_drafter_spec(args.drafter, load_tokenizer(args.verifier))
    model, tokenizer = load_causal_lm(args.verifier, args.dtype)
    drafter = None
    if wanted:
        drafter, drafter_tokenizer = load_drafter(args.drafter, drafter_config, args.dtype, model,
                                                  verifier_tokenizer=tokenizer)
        if drafter_tokenizer is not None:  # DFlash drafters use the verifier's own embedding and head
            check_same_tokenizer(tokenizer, drafter_tokenizer)
    return model, tokenizer, drafter


def check_before_loading(args, config) -> None:
    """Settings that cannot fit the verifier's context or the drafter's block, refused from
    their configs before any weight loads (the engine checks them again with the real prompt)."""
    from transformers import AutoConfig

    from specdiff.drafters.dflash_files import read_config
    from specdiff.drafters.registry import DFLASH, resolve
    from specdiff.drafters.shipped_dflash import shipped_dflash_config
    from specdiff.engine import check_block, check_context
    from specdiff.models.loading import resolve_model_folder

    try:
        verifier_config = AutoConfig.from_pretrained(resolve_model_folder(args.verifier))
    except (OSError, ValueError):  # no readable config: loading the model reports it in its words
        verifier_config = None
    check_context(1, config, getattr(verifier_config, "max_position_embeddings", None))
    drafter = resolve(args.drafter)
    if drafter.kind == DFLASH:
        dflash = shipped_dflash_config(args.drafter) if drafter.shipped else read_config(drafter.folder)
        check_block(config.gamma, dflash.block_size - 1)


def cmd_generate(args) -> int:
    from specdiff.bench.method_output import step_columns
    from specdiff.engine import stream_generate
    from specdiff.prompting import check_utf8, encode_prompt, eos_token_ids
    from specdiff.tree.build import build_tree_drafter, check_tree_config
    from specdiff.tree.config import tree_config_from_args
    from specdiff.tree.drafter import TreeDrafter
    from specdiff.verifier import Verifier
    from specdiff.verifiers.llama_cpp import open_gguf, tree_for_llama_cpp

    config = decoding_config(args)
    with naming_flag("--sources/--datastore/--tree-*"):
        tree = tree_config_from_args(args)
    plain = args.drafter.lower() == "none"
    if plain and tree.datastore:
        raise ValueError("--drafter none decodes plainly, without the tree that searches --datastore: drop one of "
                         "them (--sources lookup,suffix with any --drafter drafts from the datastore without a "
                         "drafter model)")
    if not plain:
        check_tree_config(tree)
    check_utf8(args.prompt)
    if args.backend == "llama-cpp":
        tree = tree_for_llama_cpp(tree, plain)
        verifier, tokenizer = open_gguf(args.verifier)
        model, drafter = None, None
    else:
        model, tokenizer, drafter = load_pair(args, config, load_drafter_model="diffusion" in tree.source_names)
        verifier = Verifier(model)
    prompt_ids = encode_prompt(tokenizer, args.prompt, chat=not args.raw)
    if not plain and tree.uses_tree:
        drafter = build_tree_drafter(tree, verifier, drafter, tokenizer)
    tokens, steps, shown = [], [], ""
    started = time.perf_counter()
    for step in stream_generate(prompt_ids, verifier, drafter, config, eos_token_ids(model, tokenizer)):
        steps.append(step)
        tokens.extend(step.new_tokens)
        if not args.json:
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            print(text[len(shown):], end="", flush=True)
            shown = text
    seconds = time.perf_counter() - started
    tau = len(tokens) / max(1, len(steps))
    if args.json:
        print(json.dumps({
            "text": tokenizer.decode(tokens, skip_special_tokens=True),
            "token_ids": tokens,
            "new_tokens": len(tokens),
            "verifier_calls": len(steps),
            "tau": tau,
            "tokens_per_s": len(tokens) / seconds,
            "seconds": seconds,
            **step_columns(steps),
            "acceptance_by_source": drafter.estimates.table() if isinstance(drafter, TreeDrafter) else None,
            "verify_cost_seconds": drafter.costs.table if isinstance(drafter, TreeDrafter) else None,
        }))
    else:
        print(f"\n\n[{len(tokens)} tokens, {len(steps)} verifier calls, tau {tau:.2f}, "
              f"{len(tokens) / seconds:.2f} tokens/s]")
    return 0


def register(commands) -> None:
    generate = commands.add_parser("generate", help="generate text")
    add_model_args(generate)
    add_decoding_args(generate)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--raw", action="store_true", help="send the prompt as raw text, without the chat template")
    generate.add_argument("--json", action="store_true", help="print one JSON object")
    generate.set_defaults(run=cmd_generate)
