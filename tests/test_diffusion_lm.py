import pytest
import torch

from specdiff.drafter import Accepted
from specdiff.drafters.standalone.drafter import DiffusionDrafter, block_attention_mask, chunk_bounds
from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm
from specdiff.sampling import SamplingConfig


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_whole_stack_with_causal_mask_reproduces_the_base_model(tiny_causal_lm, kind):
    base = tiny_causal_lm(kind, seed=3)
    network = diffusion_lm_from_causal_lm(base)
    ids = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(0))
    hidden = network(ids, torch.arange(12)[None], torch.ones(12, 12, dtype=torch.bool).tril()[None])
    assert torch.allclose(network.lm_head(hidden), base(ids).logits, atol=1e-5)
    assert type(network.decoder) is type(base.model), "the base model's own transformers class"


def test_truncated_stack_keeps_first_layers_and_head(tiny_causal_lm):
    base = tiny_causal_lm("llama", seed=3, layers=3)
    network = diffusion_lm_from_causal_lm(base, num_layers=1)
    assert len(network.decoder.layers) == 1 and network.config.num_hidden_layers == 1
    assert network.decoder.layers[0].mlp.up_proj.weight.data_ptr() == base.model.layers[0].mlp.up_proj.weight.data_ptr()
    assert torch.equal(network.lm_head.weight, base.lm_head.weight)


def test_block_mask_is_prefix_causal_and_block_bidirectional():
    mask = block_attention_mask(num_past=2, num_causal=2, block=3)[0].int().tolist()
    assert mask == [
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],  # block row 0: the last committed token, causal
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1],
    ]
    assert block_attention_mask(num_past=2, num_causal=2, block=3, bidirectional=True).all()


def test_chunks_cover_slots_left_to_right():
    assert chunk_bounds(5, 2) == [(0, 2), (2, 5)]
    assert chunk_bounds(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match="steps"):
        chunk_bounds(4, 5)


def test_cached_drafting_equals_uncached(tiny_causal_lm):
    """Reusing the prefix cache across steps gives the same marginals as a fresh pass."""
    network = diffusion_lm_from_causal_lm(tiny_causal_lm("qwen2", seed=5))
    greedy = SamplingConfig()
    cached = DiffusionDrafter(network)
    cached.start([1, 2, 3])
    cached.draft(4, greedy)
    cached.update(Accepted([7, 8], candidate=0, num_accepted=1))
    step_two = cached.draft(4, greedy)
    fresh = DiffusionDrafter(network)
    fresh.start([1, 2, 3, 7, 8])
    fresh = fresh.draft(4, greedy)
    assert torch.equal(step_two.tokens, fresh.tokens)
    assert torch.allclose(step_two.draft_probs, fresh.draft_probs)


def test_first_slot_of_whole_stack_drafter_is_base_models_next_token(tiny_causal_lm):
    """Shifted logits: the last prefix position predicts the first draft slot."""
    base = tiny_causal_lm("qwen2", seed=5)
    drafter = DiffusionDrafter(diffusion_lm_from_causal_lm(base))
    prefix = torch.tensor([[4, 9, 2, 11]])
    drafter.start(prefix[0].tolist())
    draft = drafter.draft(3, SamplingConfig())
    assert int(draft.tokens[0, 0]) == int(base(prefix).logits[0, -1].argmax())


def test_one_pass_drafts_share_marginals_and_differ_in_tokens(tiny_causal_lm):
    drafter = DiffusionDrafter(diffusion_lm_from_causal_lm(tiny_causal_lm("qwen2", seed=5)))
    drafter.start([1, 2])
    draft = drafter.draft(6, SamplingConfig(temperature=2.0), num_drafts=8, generator=torch.Generator().manual_seed(0))
    assert draft.tokens.shape == (8, 6) and draft.draft_probs.shape == (8, 6, 32)
    assert torch.equal(draft.draft_probs[0], draft.draft_probs[7])
    assert len({tuple(row) for row in draft.tokens.tolist()}) > 1


def test_adapters_are_peft_lora_and_change_block_rows_only(tiny_causal_lm):
    from peft.tuners.lora import LoraLayer

    base = tiny_causal_lm("qwen2", seed=5)
    network = diffusion_lm_from_causal_lm(base)
    ids = torch.randint(0, 32, (1, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(10, 10, dtype=torch.bool).tril()[None]
    with torch.no_grad():
        before = network(ids, torch.arange(10)[None], mask, adapted_from=6)
        network.add_lora(rank=4, alpha=8)
        assert isinstance(network.decoder.layers[0].self_attn.q_proj, LoraLayer)
        for name, param in network.named_parameters():
            if ".lora_B." in name:
                torch.nn.init.normal_(param)
        after = network(ids, torch.arange(10)[None], mask, adapted_from=6)
        everywhere = network(ids, torch.arange(10)[None], mask, adapted_from=0)
    assert torch.equal(before[:, :6], after[:, :6]), "prefix rows are exactly the base model's"
    assert not torch.allclose(before[:, 6:], after[:, 6:])
    assert not torch.allclose(before[:, :6], everywhere[:, :6]), "without the gate the adapters act on every row"


def test_drafters_cut_from_one_base_share_it_and_never_write_to_it(tiny_model_dir, tmp_path):
    from specdiff.drafters.standalone.files import load_diffusion_lm, save_drafter

    def saved(name, deltas):
        save_drafter(tmp_path / name, deltas, {"base": str(tiny_model_dir), "num_layers": 2,
                                                 "lora": {"r": 2, "alpha": 4.0}})
        return tmp_path / name

    alone, _ = load_diffusion_lm(saved("a", {"mask_embedding": torch.ones(32)}))
    lora_b = dict(alone.named_parameters())["decoder.layers.0.self_attn.q_proj.lora_B.default.weight"]
    changed_norm = {"mask_embedding": torch.ones(32), "norm.weight": torch.full((32,), 3.0),
                    "layers.0.self_attn.q_proj.lora_B": torch.ones_like(lora_b)}
    pool: dict = {}
    first, _ = load_diffusion_lm(tmp_path / "a", base_models=pool)
    second, _ = load_diffusion_lm(saved("b", changed_norm), base_models=pool)
    base, _ = next(iter(pool.values()))
    up = [network.decoder.layers[0].mlp.up_proj.base_layer.weight.data_ptr() for network in (first, second)]
    assert up[0] == up[1] == base.model.layers[0].mlp.up_proj.weight.data_ptr(), "one copy of the base weights"
    assert torch.equal(base.model.norm.weight, alone.decoder.norm.weight), "a drafter's delta never writes into the base"
    assert torch.equal(first.decoder.norm.weight, alone.decoder.norm.weight) and (second.decoder.norm.weight == 3.0).all()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    positions = torch.arange(5)[None]
    mask = torch.ones(1, 5, 5, dtype=torch.bool).tril()
    with torch.no_grad():
        torch.testing.assert_close(first(ids, positions, mask), alone(ids, positions, mask), rtol=0, atol=0)
