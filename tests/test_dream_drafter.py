"""Dream-architecture drafters (Dream, DiffuCoder) on transformers' Qwen2Model, against the
logits Dream's own modeling code computed (tests/fixtures/dream, made by make_fixtures.py)."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specdiff import DecodingConfig, DiffusionDrafter, Verifier, autoregressive_generate, speculative_generate
from specdiff.drafter import Accepted
from specdiff.drafters.standalone.dream import is_masked_diffusion_lm, load_dream
from specdiff.sampling import SamplingConfig

FIXTURES = Path(__file__).parent / "fixtures" / "dream"
NAMES = ["dream-tiny-gqa", "dream-tiny-mha-tied"]


@pytest.mark.parametrize("name", NAMES)
def test_loader_reproduces_dreams_own_logits(name):
    network, _ = load_dream(str(FIXTURES / name))
    reference = load_file(str(FIXTURES / name / "reference.safetensors"))
    ids = reference["input_ids"]
    positions = torch.arange(ids.shape[1])[None].expand(len(ids), -1)
    full = torch.ones(1, ids.shape[1], ids.shape[1], dtype=torch.bool)
    with torch.no_grad():
        logits = network.lm_head(network(ids, positions, full)).float()
        causal = network.lm_head(network(ids, positions, full.tril())).float()
    difference = (logits - reference["logits"]).abs().max().item()
    assert difference <= 1e-5, f"max abs difference {difference:.2e} from Dream's code"
    assert (causal - reference["logits"]).abs().max().item() > 1e-2, "the check sees the attention pattern"
    assert type(network.decoder).__name__ == "Qwen2Model" and network.bidirectional
    assert network.mask_token_id == json.loads((FIXTURES / name / "config.json").read_text())["mask_token_id"]


def dream_drafter(name="dream-tiny-gqa", vocab_size=None, **options):
    network, _ = load_dream(str(FIXTURES / name))
    return DiffusionDrafter(network, vocab_size=vocab_size, **options)


@pytest.mark.parametrize("options", [dict(prefix="exact"), dict(prefix="approximate", prefix_refresh=3),
                                     dict(prefix="exact", steps=2)])
@pytest.mark.parametrize("gamma", [1, 4])
def test_greedy_with_a_dream_drafter_equals_plain_greedy(tiny_causal_lm, options, gamma):
    verifier = Verifier(tiny_causal_lm("llama", seed=0, logit_scale=30.0))
    drafter = dream_drafter(vocab_size=verifier.vocab_size, **options)
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    config = DecodingConfig(gamma=gamma, max_new_tokens=24)
    plain = autoregressive_generate(prompt, verifier, config)
    assert speculative_generate(prompt, verifier, drafter, config).tokens == plain.tokens


def test_exact_prefix_recomputes_and_approximate_prefix_reuses():
    """Exact: a drafter stepped along a sequence drafts what a fresh one drafts. Approximate:
    the prefix is kept (cheaper) until the refresh, so its marginals drift from the exact ones."""
    sequence = [1, 5, 9, 2, 7, 3, 8, 4, 6, 10, 11, 12]
    greedy = SamplingConfig()
    exact, approximate = dream_drafter(prefix="exact"), dream_drafter(prefix="approximate", prefix_refresh=100)
    for drafter in (exact, approximate):
        drafter.start(sequence[:4])
        drafter.draft(3, greedy)
        drafter.update(Accepted(sequence[4:8], candidate=0, num_accepted=3))
    fresh = dream_drafter(prefix="exact")
    fresh.start(sequence[:8])
    expected = fresh.draft(3, greedy, num_drafts=1).confidence
    assert torch.allclose(exact.draft(3, greedy).confidence, expected, atol=1e-6)
    assert approximate._num_cached == 3, "the first pass's prefix rows were kept"
    assert not torch.allclose(approximate.draft(3, greedy).confidence, expected, atol=1e-4)
    assert approximate._num_cached == 7


def test_mask_token_and_padded_vocabulary_are_never_drafted():
    drafter = dream_drafter(vocab_size=32)
    drafter.start([1, 2, 3])
    draft = drafter.draft(4, SamplingConfig(temperature=1.0), num_drafts=64, generator=torch.Generator().manual_seed(0))
    assert draft.draft_probs.shape[-1] == 32 and int(draft.tokens.max()) < 32
    unclipped = dream_drafter()
    unclipped.start([1, 2, 3])
    probs = unclipped.draft(4, SamplingConfig(temperature=1.0)).draft_probs
    assert probs[..., unclipped.network.mask_token_id].max() == 0


def copy_fixture(tmp_path, change: dict | None = None, name="dream-tiny-gqa") -> Path:
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    if change:
        config = json.loads((folder / "config.json").read_text())
        config.update(change)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("change, message", [
    (dict(model_type="llada", vocab_size=126464), "126K-token tokenizer"),
    (dict(mask_token_id=None), "no mask_token_id"),
    (dict(mask_token_id=999), "no mask_token_id inside its vocabulary"),
    (dict(hidden_size=64), "weights do not fit its config"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope scaling"),
])
def test_unfit_checkpoints_are_refused_before_weights_load(tmp_path, monkeypatch, change, message):
    folder = copy_fixture(tmp_path, change)

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the checkpoint was checked")

    monkeypatch.setattr("specdiff.models.tensor_files.load_file", no_loading)
    assert is_masked_diffusion_lm(str(folder))
    with pytest.raises(ValueError, match=message) as refused:
        load_dream(str(folder))
    assert "\n" not in str(refused.value)


def test_a_tokenizer_that_differs_from_the_verifiers_is_refused(tiny_tokenizer, tmp_path):
    verifier_tokenizer = tiny_tokenizer()
    load_dream(str(FIXTURES / "dream-tiny-gqa"), verifier_tokenizer=verifier_tokenizer)  # the fixture shares it
    folder = copy_fixture(tmp_path)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match="tokenizer differs from the verifier's"):
        load_dream(str(folder), verifier_tokenizer=verifier_tokenizer)


def _damage(RunsCode, folder: Path, how: str) -> None:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "corrupt header":
        weights.write_bytes(data[:8] + b"{not json" + data[17:])
    elif how == "pickle named model.safetensors":
        weights.write_bytes(pickle.dumps(RunsCode(folder / "RAN")))
    elif how == "rope_scaling a string":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "rope_scaling": "linear"}))
    elif how == "index without weight_map":
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))


DAMAGE = ["truncated", "empty", "corrupt header", "pickle named model.safetensors", "rope_scaling a string",
          "index without weight_map"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("command", ["generate", "serve"])
def test_damaged_checkpoints_are_refused_in_one_line(RunsCode, tmp_path, tiny_model_dir, capsys, command, how):
    from specdiff.cli import main

    folder = copy_fixture(tmp_path)
    _damage(RunsCode, folder, how)
    args = {"generate": ["generate", "--prompt", "ab", "--sources", "diffusion"], "serve": ["serve", "--print-command"]}
    assert main([*args[command], "--verifier", str(tiny_model_dir), "--drafter", str(folder)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("specdiff: error:") and len(error.splitlines()) == 1, error
    assert not (folder / "RAN").exists()


def test_serve_refuses_a_dream_drafter_with_another_tokenizer(tmp_path, tiny_model_dir, capsys):
    from specdiff.cli import main

    folder = copy_fixture(tmp_path)
    assert main(["serve", "--print-command", "--verifier", str(tiny_model_dir), "--drafter", str(folder)]) == 0
    capsys.readouterr()
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert main(["serve", "--print-command", "--verifier", str(tiny_model_dir), "--drafter", str(folder)]) == 2
    assert "tokenizer differs from the verifier's" in capsys.readouterr().err


def test_pickled_weights_are_refused(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no complete safetensors weights"):
        load_dream(str(folder))


def test_generate_refuses_llada_in_one_line(tmp_path, tiny_model_dir, capsys):
    from specdiff.cli import main

    folder = copy_fixture(tmp_path, dict(model_type="llada"))
    assert main(["generate", "--verifier", str(tiny_model_dir), "--drafter", str(folder), "--prompt", "ab"]) == 2
    error = capsys.readouterr().err.strip()
    assert "126K-token tokenizer" in error and len(error.splitlines()) == 1


def test_generate_drafts_with_a_dream_folder(tmp_path, tiny_model_dir, capsys):
    from specdiff.cli import main

    args = ["generate", "--verifier", str(tiny_model_dir), "--prompt", "abc", "--raw", "--max-new-tokens", "12",
            "--json", "--sources", "diffusion"]
    assert main([*args, "--drafter", str(FIXTURES / "dream-tiny-gqa")]) == 0
    drafted = json.loads(capsys.readouterr().out)
    assert main([*args, "--drafter", "none"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert drafted["token_ids"] == plain["token_ids"] and max(drafted["nodes"]) > 1, "the drafter's block was verified"


def test_draft_top_k_keeps_each_slots_k_most_likely_tokens():
    drafter = dream_drafter(vocab_size=32)
    drafter.start([1, 2, 3])
    draft = drafter.draft(4, SamplingConfig(temperature=1.0, top_k=3), num_drafts=200,
                          generator=torch.Generator().manual_seed(0))
    assert ((draft.draft_probs > 0).sum(-1) == 3).all()
    drawn = draft.draft_probs[0].gather(-1, draft.tokens.T[..., None].expand(-1, -1, 1).reshape(4, -1))
    assert (drawn > 0).all(), "every sampled token is one of its slot's top 3"


def test_the_reference_draft_settings_are_selectable():
    import argparse

    from specdiff.commands.generate import add_decoding_args, decoding_config

    parser = argparse.ArgumentParser()
    add_decoding_args(parser)
    config = decoding_config(parser.parse_args(["--temperature", "0.7", "--draft-temperature", "1", "--draft-top-k",
                                                "64", "--num-drafts", "4"]))
    assert config.draft_sampling == SamplingConfig(temperature=1.0, top_k=64) and config.sampling.temperature == 0.7
    assert decoding_config(parser.parse_args(["--draft-top-k", "8"])).draft_sampling == SamplingConfig(top_k=8)


def test_placeholders_for_unused_ids_are_not_tokens(tiny_tokenizer):
    """A verifier tokenizer converted from GGUF names unused ids [PAD<id>]; Dream's mask id is one."""
    from transformers import PreTrainedTokenizerFast

    from specdiff.drafters.standalone.dream import check_tokenizer_fits, load_dream_tokenizer

    verifier_tokenizer = tiny_tokenizer()
    verifier_tokenizer.add_tokens(["[PAD32]", "[PAD33]"])  # ids 32 and 33: placeholders
    assert isinstance(verifier_tokenizer, PreTrainedTokenizerFast)
    check_tokenizer_fits("fixture", load_dream_tokenizer(str(FIXTURES / "dream-tiny-gqa")), verifier_tokenizer, 33)
    verifier_tokenizer.add_tokens(["zz"])  # id 34: a real token the fixture lacks
    with pytest.raises(ValueError, match="tokenizer differs"):
        check_tokenizer_fits("fixture", load_dream_tokenizer(str(FIXTURES / "dream-tiny-gqa")), verifier_tokenizer, 33)
