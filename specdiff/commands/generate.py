"""``specdiff generate``: model and decoding flags, loading the verifier and drafter, streaming text."""

from __future__ import annotations

import argparse
import contextlib
import json
import time

from transformers import AutoConfig

from specdiff.bench.method_output import step_columns
from specdiff.config_args import add_dataclass_args, dataclass_from_args
from specdiff.drafters.conditioned.files import read_config
from specdiff.drafters.conditioned.shipped import shipped_dflash_config
from specdiff.drafters.loading import DrafterConfig, check_drafter_spec, load_drafter
from specdiff.drafters.registry import DEFAULT_DRAFTER, DFLASH, resolve
from specdiff.engine import DecodingConfig, check_block, check_context, stream_generate
from specdiff.models.loading import (
    check_same_tokenizer,
    load_tokenizer,
    resolve_model_folder,
)
from specdiff.models.registry import DEFAULT_VERIFIER
from specdiff.prompting import check_utf8, encode_prompt
from specdiff.sampling import SamplingConfig
from specdiff.tree.build import build_tree_drafter, check_tree_config
from specdiff.tree.config import add_tree_args, tree_config_from_args
from specdiff.tree.drafter import TreeDrafter
from specdiff.verifiers.backends import (
    AUTO,
    BACKENDS,
    LLAMA_CPP,
    choose_backend,
    open_verifier,
)
from specdiff.verifiers.llama_cpp import tree_for_llama_cpp


def add_decoding_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``DecodingConfig`` and of the verifier's ``SamplingConfig``, from the dataclasses."""

    add_dataclass_args(parser, DecodingConfig, skip=("sampling", "draft_sampling"))
    add_dataclass_args(parser, SamplingConfig)
    parser.add_argument("--draft-temperature", type=float, default=None,
                        help="drafter temperature (default: the verifier's)")
    parser.add_argument("--draft-top-k", type=int, default=0,
                        help="sampled drafts come from each slot's k most likely tokens (0 = all; the SpecDiff-2 "
                             "reference drafts with --draft-temperature 1 --draft-top-k 64)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verifier", default=DEFAULT_VERIFIER, help="named model, local folder or Hub id")
    parser.add_argument("--drafter", default=DEFAULT_DRAFTER,
                        help="named drafter, saved diffusion drafter folder, DFlash-layout folder, causal LM, "
                             "or 'none' for plain decoding (no tree, no lookup)")
    add_dataclass_args(parser, DrafterConfig, prefix="drafter_")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--backend", default=AUTO, choices=BACKENDS,
                        help="transformers: the verifier in PyTorch (fp32 from the GGUF), every drafter; llama-cpp: the "
                             "GGUF itself through llama.cpp (pip install 'specdiff[llama]'), every drafter but "
                             "DFlash-layout ones, diffusion drafts only when --sources names them; auto (default): "
                             "llama-cpp where it is installed and can run what was asked (a named model or .gguf "
                             "file, fp32), the fastest on the CPUs measured (docs/backends.md), else transformers")

    add_tree_args(parser)


@contextlib.contextmanager
def naming_flag(flag: str):
    """Prefix a setting's ValueError with the command-line flag that carried it."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def decoding_config(args):
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


def load_models(args, backend: str, tree, plain: bool):
    """(the opened verifier, the tree settings its backend takes, the drafter or None); the
    drafter spec is checked before any weights load."""

    drafter_config = dataclass_from_args(DrafterConfig, args, prefix="drafter_")
    opened = None
    if backend == LLAMA_CPP:  # opens in a second, and its tokenizer needs no fp32 conversion
        tree = tree_for_llama_cpp(tree, plain)
        opened = open_verifier(args.verifier, backend, args.drafter, args.dtype)
    wanted = not plain and "diffusion" in tree.source_names
    if wanted:  # on transformers, before the verifier's weights load
        check_drafter_spec(args.drafter, opened.tokenizer if opened else load_tokenizer(args.verifier))
    opened = opened or open_verifier(args.verifier, backend, args.drafter, args.dtype)
    drafter = None
    if wanted:
        drafter, drafter_tokenizer = load_drafter(args.drafter, drafter_config, args.dtype, opened.model,
                                                  verifier_tokenizer=opened.tokenizer)
        if drafter_tokenizer is not None:  # DFlash drafters use the verifier's own embedding and head
            check_same_tokenizer(opened.tokenizer, drafter_tokenizer)
    return opened, tree, drafter


def check_before_loading(args, config, backend: str) -> None:
    """Settings that cannot fit the verifier's context or the drafter's block, refused from
    their configs before any weight loads (the engine checks them again with the real prompt;
    on llama.cpp the GGUF holds the context, read when it opens)."""

    verifier_config = None  # no readable config: loading the model reports it in its words
    if backend != LLAMA_CPP:  # there a transformers config would cost the fp32 conversion
        with contextlib.suppress(OSError, ValueError):
            verifier_config = AutoConfig.from_pretrained(resolve_model_folder(args.verifier))
    check_context(1, config, getattr(verifier_config, "max_position_embeddings", None))
    drafter = resolve(args.drafter)
    if drafter.kind == DFLASH:
        dflash = shipped_dflash_config(args.drafter) if drafter.shipped else read_config(drafter.folder)
        check_block(config.gamma, dflash.block_size - 1)


def cmd_generate(args) -> int:
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
    backend = choose_backend(args.verifier, args.backend, args.drafter, args.dtype)
    check_before_loading(args, config, backend)
    opened, tree, drafter = load_models(args, backend, tree, plain)
    verifier, tokenizer, eos = opened.verifier, opened.tokenizer, opened.eos
    prompt_ids = encode_prompt(tokenizer, args.prompt, chat=not args.raw)
    if not plain and tree.uses_tree:
        drafter = build_tree_drafter(tree, verifier, drafter, tokenizer)
    tokens, steps, shown = [], [], ""
    started = time.perf_counter()
    for step in stream_generate(prompt_ids, verifier, drafter, config, eos):
        steps.append(step)
        tokens.extend(step.new_tokens)
        if not args.json:
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            print(text[len(shown):], end="", flush=True)
            shown = text
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({"backend": backend, **json_report(tokenizer, tokens, steps, seconds, drafter)}))
    else:
        print(f"\n\n[{len(tokens)} tokens, {len(steps)} verifier calls, tau {len(tokens) / max(1, len(steps)):.2f}, "
              f"{len(tokens) / seconds:.2f} tokens/s, backend {backend}]")
    return 0


def json_report(tokenizer, tokens: list[int], steps: list, seconds: float, drafter) -> dict:
    """``generate --json``: the text, the totals, and per verifier call the bench's columns."""
    tree = drafter if isinstance(drafter, TreeDrafter) else None
    return {
        "text": tokenizer.decode(tokens, skip_special_tokens=True),
        "token_ids": tokens,
        "new_tokens": len(tokens),
        "verifier_calls": len(steps),
        "tau": len(tokens) / max(1, len(steps)),
        "tokens_per_s": len(tokens) / seconds,
        "seconds": seconds,
        **step_columns(steps),
        "acceptance_by_source": tree.estimates.table() if tree else None,
        "verify_cost_seconds": tree.costs.table if tree else None,
    }


def register(commands) -> None:
    generate = commands.add_parser("generate", help="generate text")
    add_model_args(generate)
    add_decoding_args(generate)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--raw", action="store_true", help="send the prompt as raw text, without the chat template")
    generate.add_argument("--json", action="store_true", help="print one JSON object")
    generate.set_defaults(run=cmd_generate)
