"""Serving through vLLM, the parts that need no vLLM: which speculative configuration a
drafter gets, refusals before a server starts, the command line, the environment, and the
custom proposer's bookkeeping (a request's drafter state follows it across batch rows)."""

from pathlib import Path

import numpy as np
import pytest

from specdiff.cli import main
from specdiff.drafters.conditioned.files import save_dflash
from specdiff.drafters.conditioned.network import DFlashNetwork, dflash_config
from specdiff.drafters.standalone.drafter import DiffusionDrafter
from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm
from specdiff.sampling import SamplingConfig
from specdiff.serving.environment import vllm_environment
from specdiff.serving.proposer import DrafterStates
from specdiff.serving.speculative import PROPOSER_CLASS, speculative_setup


@pytest.fixture(scope="module")
def verifier_config(tiny_causal_lm):
    return tiny_causal_lm("qwen2", seed=0, layers=4).config


def dflash_folder(tmp_path, verifier_config, block_size=6):
    config = dflash_config(verifier_config, 1, block_size=block_size, target_layer_ids=[0, 1])
    return save_dflash(DFlashNetwork(config), tmp_path / "dflash")


def test_each_drafter_kind_gets_its_vllm_method(tmp_path, verifier_config):
    assert speculative_setup("none", verifier_config).config is None
    ngram = speculative_setup("ngram", verifier_config, 3).config
    assert ngram["method"] == "ngram" and ngram["num_speculative_tokens"] == 3
    folder = dflash_folder(tmp_path, verifier_config, block_size=6)
    dflash = speculative_setup(str(folder), verifier_config)
    assert dflash.config == {"method": "dflash", "model": str(folder.resolve()), "num_speculative_tokens": 5}
    assert speculative_setup(str(folder), verifier_config, 2).config["num_speculative_tokens"] == 2
    diffusion = speculative_setup("specdiff-qwen2.5-coder-1.5b", verifier_config, 4, steps=2)
    assert diffusion.config["method"] == "custom_class" and diffusion.config["model"] == PROPOSER_CLASS
    assert diffusion.environment["SPECDIFF_VLLM_DRAFTER_STEPS"] == "2"
    dream = Path(__file__).parent / "fixtures" / "dream" / "dream-tiny-gqa"
    served = speculative_setup(str(dream), verifier_config, 4, sources="lookup,diffusion")
    assert served.config["model"] == PROPOSER_CLASS and served.environment["SPECDIFF_VLLM_DRAFTER"] == str(dream)


def test_a_dream_architecture_model_that_cannot_draft_is_refused_before_any_server(tmp_path, verifier_config):
    import json
    import shutil

    llada = tmp_path / "llada"
    shutil.copytree(Path(__file__).parent / "fixtures" / "dream" / "dream-tiny-gqa", llada)
    config = json.loads((llada / "config.json").read_text())
    (llada / "config.json").write_text(json.dumps({**config, "model_type": "llada"}))
    with pytest.raises(ValueError, match="126K-token tokenizer"):
        speculative_setup(str(llada), verifier_config)


def test_drafters_that_cannot_be_served_are_refused_before_any_server(tiny_causal_lm, tmp_path, verifier_config):
    other = tiny_causal_lm("qwen2", seed=0, layers=4).config
    other.hidden_size = 64
    folder = dflash_folder(tmp_path, verifier_config)
    with pytest.raises(ValueError, match="hidden size"):
        speculative_setup(str(folder), other)
    with pytest.raises(ValueError, match="not a DFlash folder"):
        speculative_setup(str(tmp_path / "nothing-here"), verifier_config)
    with pytest.raises(ValueError, match="--gamma"):
        speculative_setup("ngram", verifier_config, 0)


def test_serve_refuses_what_generate_refuses_before_vllm_starts(RunsCode, tmp_path, verifier_config):
    import shutil

    import torch

    from specdiff.drafters.standalone.files import shipped_drafter_dir

    truncated = dflash_folder(tmp_path / "a", verifier_config)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="damaged weights"):
        speculative_setup(str(truncated), verifier_config)
    hostile = dflash_folder(tmp_path / "b", verifier_config)
    marker = tmp_path / "ran"
    torch.save({"mask_token_id": 0, "embedding": RunsCode(marker)}, hostile / "mask_embedding.pt")
    with pytest.raises(ValueError, match="not a plain tensor file"):
        speculative_setup(str(hostile), verifier_config)
    assert not marker.exists()
    with pytest.raises(ValueError, match="beyond what the DFlash drafter"):
        speculative_setup(str(dflash_folder(tmp_path / "c", verifier_config, block_size=6)), verifier_config, 6)
    standalone = tmp_path / "standalone"
    shutil.copytree(shipped_drafter_dir("specdiff-qwen2.5-coder-1.5b"), standalone)
    deltas = standalone / "deltas.safetensors"
    deltas.write_bytes(deltas.read_bytes()[:1000])
    with pytest.raises(ValueError, match="damaged or missing weights"):
        speculative_setup(str(standalone), verifier_config)


@pytest.mark.parametrize("flags, message", [
    (["--port", "99999"], "--port must be in 1..65535"),
    (["--port", "0"], "--port must be in 1..65535"),
    (["--max-model-len", "-5"], "--max-model-len must be >= 1"),
    (["--max-num-seqs", "0"], "--max-num-seqs must be >= 1"),
    (["--kv-cache-gib", "0"], "--kv-cache-gib must be > 0"),
])
def test_serve_refuses_bad_numbers_in_one_line(tiny_model_dir, capsys, flags, message):
    assert main(["serve", "--verifier", str(tiny_model_dir), *flags, "--print-command"]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_a_port_in_use_is_refused_in_one_line():
    import socket

    from specdiff.serving.server import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again once closed


def test_serve_prints_the_vllm_command_it_would_run(tiny_causal_lm, tiny_model_dir, tmp_path, capsys, verifier_config):
    folder = dflash_folder(tmp_path, tiny_causal_lm("qwen2", seed=4).config)
    assert main(["serve", "--verifier", str(tiny_model_dir), "--drafter", str(folder), "--port", "8123",
                 "--print-command"]) == 0
    line = capsys.readouterr().out
    assert "vllm.entrypoints.launchers.api_server.entry --model " + str(tiny_model_dir) in line
    assert "--port 8123" in line
    assert '"method": "dflash"' in line and "VLLM_CPU_KVCACHE_SPACE=" in line


@pytest.mark.parametrize("failure, hint", [
    (ImportError("No module named 'vllm'"), "specdiff[vllm]"),
    (RuntimeError("operator torchvision::nms does not exist"), "pip uninstall -y torchvision"),
])
def test_serve_without_a_working_vllm_says_what_to_do(tiny_model_dir, capsys, monkeypatch, failure, hint):
    import builtins

    real_import = builtins.__import__

    def broken_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise failure
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken_vllm)
    assert main(["serve", "--verifier", str(tiny_model_dir), "--drafter", "none"]) == 2
    err = capsys.readouterr().err
    assert hint in err and len(err.strip().splitlines()) == 1


def test_vllm_environment_keeps_the_users_settings(tmp_path):
    env = vllm_environment({"VLLM_CPU_KVCACHE_SPACE": "9", "LD_PRELOAD": "/x.so"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "9" and "/x.so" in env["LD_PRELOAD"].split(":")
    assert vllm_environment({}, kv_cache_gib=2)["VLLM_CPU_KVCACHE_SPACE"] == "2"


def argmax_draft(drafter, gamma=4):
    return drafter.draft(gamma, SamplingConfig(), greedy_first=True).tokens[0].tolist()


def test_a_requests_drafter_state_follows_it_across_batch_rows(tiny_causal_lm):
    network = diffusion_lm_from_causal_lm(tiny_causal_lm("qwen2", seed=5))
    states = DrafterStates(lambda: DiffusionDrafter(network))
    first, second = [1, 2, 3, 4, 5], [9, 8, 7]
    original = states.drafter_for(first)
    argmax_draft(original)  # its cache now holds the prefix
    states.drafter_for(second)
    grown = first + [6, 7, 8]  # the request moved rows and committed three tokens
    kept = states.drafter_for(grown)
    assert kept is original and kept._tokens == grown and kept._num_cached == len(first) - 1
    fresh = DiffusionDrafter(network)
    fresh.start(grown)
    assert argmax_draft(kept) == argmax_draft(fresh)
    assert states.drafter_for(second)._tokens == second
    assert len(states._states) == 2


def test_finished_requests_states_are_dropped_oldest_first(tiny_causal_lm):
    network = diffusion_lm_from_causal_lm(tiny_causal_lm("qwen2", seed=5))
    states = DrafterStates(lambda: DiffusionDrafter(network), capacity=2)
    for start in (1, 2, 3):
        states.drafter_for([start, 4, 5])
    assert [known for known, _ in states._states.values()] == [[2, 4, 5], [3, 4, 5]]


def test_proposer_drafts_what_a_fresh_drafter_drafts(tiny_causal_lm, monkeypatch):

    from specdiff.serving import proposer as proposer_module

    network = diffusion_lm_from_causal_lm(tiny_causal_lm("qwen2", seed=5))
    proposer = proposer_module.DiffusionProposer.__new__(proposer_module.DiffusionProposer)
    proposer.gamma, proposer.max_model_len = 4, 64
    proposer.states = DrafterStates(lambda: DiffusionDrafter(network))
    rows = np.zeros((2, 64), dtype=np.int64)
    rows[0, :5], rows[1, :3] = [1, 2, 3, 4, 5], [9, 8, 7]
    drafts = proposer.propose([[5], []], np.array([5, 3]), rows)
    fresh = DiffusionDrafter(network)
    fresh.start([1, 2, 3, 4, 5])
    assert drafts == [argmax_draft(fresh), []]  # row 1 sampled nothing this step: no draft


def test_the_load_client_keeps_at_most_the_level_in_flight_and_counts_tokens():
    import threading
    import time
    from types import SimpleNamespace

    from specdiff.bench.serve_load import percentile, run_level

    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def create(**kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return SimpleNamespace(usage=SimpleNamespace(completion_tokens=kwargs["max_tokens"]))

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    result = run_level(client, "m", ["a"] * 12, concurrency=3, max_tokens=5)
    assert state["most"] == 3 and result.requests == 12 and result.completion_tokens == 60
    assert result.tokens_per_s == pytest.approx(60 / result.wall_seconds)
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and percentile([1.0, 2.0, 3.0, 4.0], 0.9) == 4.0


def test_the_load_client_names_the_requests_that_failed():
    from types import SimpleNamespace

    from specdiff.bench.serve_load import run_level

    def create(**kwargs):
        if kwargs["messages"][0]["content"] == "bad":
            raise TimeoutError("Request timed out.")
        return SimpleNamespace(usage=SimpleNamespace(completion_tokens=kwargs["max_tokens"]))

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    result = run_level(client, "m", ["a", "bad", "a", "bad"], concurrency=2, max_tokens=5)
    assert result.requests == 4 and result.failed == 2 and result.completion_tokens == 10
    assert result.failures == ("request 1: TimeoutError: Request timed out.", "request 3: TimeoutError: Request timed out.")
    everything_fails = run_level(client, "m", ["bad"], concurrency=1, max_tokens=5)
    assert everything_fails.failed == 1 and everything_fails.latency_mean_s != everything_fails.latency_mean_s  # nan


@pytest.mark.parametrize("flags, message", [
    (["--concurrency", "abc"], "--concurrency takes comma-separated numbers"),
    (["--concurrency", "0,4"], "--concurrency takes comma-separated numbers"),
    (["--requests", "0"], "--requests must be >= 1"),
    (["--requests", "-3"], "--requests must be >= 1"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
])
def test_bench_serve_refuses_bad_flags_in_one_line(flags, message, capsys):
    from specdiff.cli import main

    assert main(["bench-serve", "--label", "x", *flags]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:9/v1", "cannot connect to http://127.0.0.1:9/v1"),
    ("http://127.0.0.1:9", "ends in /v1"),
])
def test_bench_serve_without_a_server_says_so_in_one_line(url, message, capsys, tmp_path):
    pytest.importorskip("openai", reason="bench-serve's client: pip install openai (the vllm extra has it)")
    from specdiff.cli import main

    assert main(["bench-serve", "--label", "x", "--url", url, "--out", str(tmp_path / "r.jsonl")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "r.jsonl").exists()


def test_a_shipped_drafter_that_does_not_fit_is_refused_before_it_is_built(tmp_path, monkeypatch, verifier_config):
    monkeypatch.setenv("SPECDIFF_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="specdiff-dflash-qwen2.5-coder-1.5b"):
        speculative_setup("specdiff-dflash-qwen2.5-coder-1.5b", verifier_config)
    assert not (tmp_path / "drafters").exists()


def test_the_tree_policy_is_served_through_the_proposer(tmp_path, verifier_config):
    diffusion = speculative_setup("specdiff-qwen2.5-coder-1.5b", verifier_config, 4)
    assert diffusion.environment["SPECDIFF_VLLM_SOURCES"] == "lookup,suffix,diffusion"  # generate's default
    alone = speculative_setup("specdiff-qwen2.5-coder-1.5b", verifier_config, 4, sources="diffusion")
    assert alone.environment["SPECDIFF_VLLM_SOURCES"] == "diffusion"
    with pytest.raises(ValueError, match="--sources applies to standalone diffusion drafters"):
        speculative_setup(str(dflash_folder(tmp_path, verifier_config)), verifier_config, sources="lookup")
    with pytest.raises(ValueError, match="--sources takes"):
        speculative_setup("specdiff-qwen2.5-coder-1.5b", verifier_config, 4, sources="lookup,bogus")


def test_the_tree_proposer_proposes_one_chain_and_learns_across_requests(tiny_causal_lm):
    from specdiff.serving import proposer as proposer_module
    from specdiff.tree.config import TreeConfig

    network = diffusion_lm_from_causal_lm(tiny_causal_lm("qwen2", seed=5))
    proposer = proposer_module.DiffusionProposer.__new__(proposer_module.DiffusionProposer)
    proposer.gamma, proposer.max_model_len, proposer._last_call, proposer._last_chain = 4, 64, None, 0
    tree = TreeConfig(sources="lookup,suffix,diffusion", max_nodes=4, max_depth=4)
    proposer.states = proposer_module.make_states(lambda: DiffusionDrafter(network), tree, network.config.vocab_size)
    repeating = [3, 4, 5, 6, 7, 8, 3, 4, 5, 6, 7, 8, 3, 4]
    rows = np.zeros((2, 64), dtype=np.int64)
    rows[0, :len(repeating)], rows[1, :3] = repeating, [9, 8, 7]
    first = proposer.propose([[4], [7]], np.array([len(repeating), 3]), rows)
    assert first[0] == [5, 6, 7, 8]  # the text repeats: lookup's chain, at most gamma long
    assert len(first[1]) <= 4
    rows[0, len(repeating):len(repeating) + 5] = [5, 6, 7, 8, 3]  # vLLM accepted the chain and added 3
    proposer.propose([[3], []], np.array([len(repeating) + 5, 3]), rows)
    assert proposer.states.costs.table.get(5) is not None  # the step time of a 4-token chain, learnt
    assert proposer.states._states[next(iter(proposer.states._states))][1].estimates.trials  # shared estimates


def test_a_port_whose_last_connections_linger_in_time_wait_is_free():
    """A stopped server's closed connections stay in TIME_WAIT for a minute; the next server
    binds with SO_REUSEADDR, so the check must not refuse the port meanwhile."""
    import socket

    from specdiff.serving.server import check_port_free

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end of the connection enters TIME_WAIT
    client.close()
    listener.close()
    check_port_free("127.0.0.1", port)
