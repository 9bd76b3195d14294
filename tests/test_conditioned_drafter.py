"""The DFlash-layout drafter conditioned on the verifier's hidden states: losslessness,
its context cache, the files vLLM loads, and refusals of drafters that do not fit."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from specdiff import DecodingConfig, SamplingConfig, Verifier, autoregressive_generate, speculative_generate
from specdiff.drafters.conditioned.drafter import ConditionedDrafter
from specdiff.drafters.conditioned.files import DrafterMismatchError, load_dflash, save_dflash
from specdiff.drafters.conditioned.network import DFlashNetwork, default_target_layer_ids, dflash_config
from specdiff.drafters.loading import DrafterConfig, load_drafter

PROMPTS = [[1, 2, 3, 4, 5], [7], [30, 2, 2, 2, 9, 14, 3, 3, 0, 1, 20]]
LAYER_IDS = [0, 2]


@pytest.fixture(scope="module")
def verifier_model(tiny_causal_lm):
    return tiny_causal_lm("qwen2", seed=0, logit_scale=30.0, layers=4)


def random_network(verifier_model, seed=3, num_layers=2, mask_embedding=True):
    config = dflash_config(verifier_model.config, num_layers, block_size=8, target_layer_ids=LAYER_IDS)
    torch.manual_seed(seed)
    network = DFlashNetwork(config, separate_mask_embedding=mask_embedding)
    if mask_embedding:
        torch.nn.init.normal_(network.mask_embedding)
    return network.eval()


def test_default_target_layers_follow_dflash():
    assert default_target_layer_ids(28, 5) == [1, 7, 13, 19, 25]
    assert default_target_layer_ids(28, 3) == [1, 13, 25]
    assert default_target_layer_ids(28, 1) == [14]


@pytest.mark.parametrize("gamma", [1, 4, 7])
@pytest.mark.parametrize("num_drafts", [1, 3])
def test_greedy_output_equals_plain_greedy(verifier_model, gamma, num_drafts):
    verifier = Verifier(verifier_model)
    drafter = ConditionedDrafter(random_network(verifier_model), verifier_model)
    draft_sampling = SamplingConfig(temperature=1.5) if num_drafts > 1 else None
    config = DecodingConfig(gamma=gamma, num_drafts=num_drafts, max_new_tokens=30, draft_sampling=draft_sampling)
    for prompt in PROMPTS:
        prompt_ids = torch.tensor([prompt])
        reference = autoregressive_generate(prompt_ids, verifier, config)
        result = speculative_generate(prompt_ids, verifier, drafter, config)
        assert result.tokens == reference.tokens
        assert all(step.drafted <= gamma for step in result.steps)


def test_context_built_step_by_step_equals_one_fresh_pass(verifier_model):
    verifier = Verifier(verifier_model)
    network = random_network(verifier_model)
    stepped = ConditionedDrafter(network, verifier_model)
    config = DecodingConfig(gamma=4, num_drafts=3, max_new_tokens=24, draft_sampling=SamplingConfig(temperature=3.0))
    result = speculative_generate(torch.tensor([PROMPTS[2]]), verifier, stepped, config)
    assert any(step.accepted < step.drafted for step in result.steps)  # rejections happened
    sequence = stepped.sequence
    assert len(sequence) > len(PROMPTS[2]) + 10
    fresh = ConditionedDrafter(network, verifier_model)
    fresh.start(sequence, Verifier(verifier_model).prefill(torch.tensor([sequence]), network.target_layer_ids))
    assert torch.allclose(stepped.slot_logits(6), fresh.slot_logits(6), atol=1e-4)
    control = ConditionedDrafter(network, verifier_model)  # a context one token short differs
    control.start(sequence[:-1], Verifier(verifier_model).prefill(torch.tensor([sequence[:-1]]), LAYER_IDS))
    assert not torch.allclose(stepped.slot_logits(6), control.slot_logits(6), atol=1e-3)


def test_verifier_features_from_scoring_equal_a_fresh_pass(verifier_model):
    verifier = Verifier(verifier_model)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    prefix_features = verifier.prefill(prompt, LAYER_IDS)
    assert prefix_features.shape == (4, 2 * verifier_model.config.hidden_size)
    scored = verifier.score(torch.tensor([[5, 9, 2, 6], [5, 9, 7, 7]]), LAYER_IDS)  # a trie of 6 nodes
    committed = verifier.commit(scored, candidate=1, num_accepted=2)
    assert committed.tokens == [5, 9, 7]
    fresh = Verifier(verifier_model).prefill(torch.tensor([[3, 1, 4, 1, 5, 9, 7, 0]]), LAYER_IDS)
    assert torch.allclose(torch.cat([prefix_features, committed.features]), fresh, atol=1e-5)
    with pytest.raises(ValueError, match="latest score"):
        verifier.commit(scored, candidate=0, num_accepted=0)


def test_save_load_and_load_again_are_equal(verifier_model, tmp_path):
    network = random_network(verifier_model)
    save_dflash(network, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["architectures"] == ["DFlashDraftModel"] and config["block_size"] == 8
    assert config["dflash_config"] == {"mask_token_id": 31, "target_layer_ids": LAYER_IDS}
    assert config["num_target_layers"] == 4
    assert set(load_file(str(tmp_path / "a" / "model.safetensors"))) >= {"fc.weight", "hidden_norm.weight", "norm.weight",
                                                                          "layers.1.self_attn.q_norm.weight"}
    loaded = load_dflash(tmp_path / "a", verifier_model.config)
    save_dflash(loaded, tmp_path / "b")
    again = load_dflash(tmp_path / "b", verifier_model.config)
    for first, second in ((network, loaded), (loaded, again)):
        a, b = first.state_dict(), second.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_folder_in_the_published_layout_loads(verifier_model, tmp_path):
    """Sharded weights, the older rope_theta key, no num_target_layers, no mask embedding."""
    network = random_network(verifier_model, mask_embedding=False)
    state = network.state_dict()
    names = sorted(state)
    save_file({k: state[k] for k in names[: len(names) // 2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in names[len(names) // 2:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    config = network.config.to_dict()
    config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]
    config.pop("num_target_layers")
    (tmp_path / "config.json").write_text(json.dumps(config))
    drafter, tokenizer = load_drafter(str(tmp_path), DrafterConfig(weights="float32"), verifier_model=verifier_model)
    assert isinstance(drafter, ConditionedDrafter) and tokenizer is None
    reference = ConditionedDrafter(network, verifier_model)
    for d in (drafter, reference):
        d.start([1, 2, 3], Verifier(verifier_model).prefill(torch.tensor([[1, 2, 3]]), LAYER_IDS))
    assert torch.equal(drafter.slot_logits(5), reference.slot_logits(5))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(hidden_size=48), "hidden size"),
    (lambda c: c.update(num_key_value_heads=4), "key/value heads"),
    (lambda c: c.update(num_attention_heads=8, head_dim=4), "attention heads"),
    (lambda c: c["dflash_config"].update(target_layer_ids=[0, 4]), r"target_layer_ids \[0, 4\] do not fit the verifier's 4 layers"),
    (lambda c: c["dflash_config"].update(mask_token_id=32), "mask_token_id 32 is outside the verifier's embedding of 32 rows"),
    (lambda c: c.update(vocab_size=40), r"vocabulary \(40\) differs"),
    (lambda c: c.update(num_target_layers=36), "made for a verifier of 36 layers"),
])
def test_a_drafter_that_does_not_fit_is_refused_in_one_line(verifier_model, tmp_path, edit, message):
    save_dflash(random_network(verifier_model), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DrafterMismatchError, match=message) as caught:
        load_dflash(tmp_path, verifier_model.config)
    assert len(str(caught.value).splitlines()) == 1


def test_damaged_folders_are_refused(verifier_model, tmp_path):
    save_dflash(random_network(verifier_model), tmp_path / "good")
    weights = load_file(str(tmp_path / "good" / "model.safetensors"))

    def variant(name, change):
        folder = tmp_path / name
        shutil.copytree(tmp_path / "good", folder)
        change(folder)
        return folder

    missing = variant("missing", lambda f: save_file({k: v for k, v in weights.items() if k != "fc.weight"},
                                                      str(f / "model.safetensors")))
    with pytest.raises(DrafterMismatchError, match=r"missing \['fc.weight'\]"):
        load_dflash(missing, verifier_model.config)
    shaped = variant("shaped", lambda f: save_file({**weights, "fc.weight": weights["fc.weight"][:, :10].contiguous()},
                                                    str(f / "model.safetensors")))
    with pytest.raises(DrafterMismatchError, match=r"fc.weight has shape \(32, 10\), the config needs \(32, 64\)"):
        load_dflash(shaped, verifier_model.config)
    truncated = variant("truncated", lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:500]))
    with pytest.raises(DrafterMismatchError, match="damaged weights"):
        load_dflash(truncated, verifier_model.config)


def test_a_mask_embedding_file_that_would_run_code_is_refused(RunsCode, verifier_model, tmp_path):
    save_dflash(random_network(verifier_model), tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"mask_token_id": 31, "embedding": RunsCode(marker)}, tmp_path / "mask_embedding.pt")
    with pytest.raises(DrafterMismatchError, match="not a plain tensor file") as refused:
        load_dflash(tmp_path, verifier_model.config)
    assert not marker.exists()
    assert "weights_only" not in str(refused.value), "never pass on torch's advice to load it unsafely"


def test_cli_generates_with_an_untrained_dflash_drafter(tiny_model_dir, capsys):
    from specdiff.cli import main

    common = ["generate", "--verifier", str(tiny_model_dir), "--gamma", "4", "--max-new-tokens", "12", "--raw", "--json",
              "--prompt", "def f(x):"]
    dflash = ["--drafter", str(tiny_model_dir), "--drafter-kind", "dflash", "--drafter-layers", "1"]
    assert main(common + dflash) == 0
    speculative = json.loads(capsys.readouterr().out)
    assert main(common + ["--drafter", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == speculative["token_ids"]
    assert max(speculative["accepted_lengths"]) <= 4 + 1  # tokens committed per call: gamma drafts + the verifier's


def test_a_gamma_beyond_the_drafters_block_is_refused_before_any_model_loads(tiny_model_dir, tmp_path, capsys,
                                                                             monkeypatch):
    import transformers

    from specdiff.cli import main
    from specdiff.models.loading import load_causal_lm

    verifier, _ = load_causal_lm(str(tiny_model_dir))
    save_dflash(DFlashNetwork(dflash_config(verifier.config, 1, 4)), tmp_path / "drafter")

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before --gamma was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    assert main(["generate", "--verifier", str(tiny_model_dir), "--drafter", str(tmp_path / "drafter"),
                 "--gamma", "5", "--prompt", "hi"]) == 2
    assert "gamma 5 is beyond the drafter's block of 3 draft slots" in capsys.readouterr().err
