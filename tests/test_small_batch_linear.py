"""The small-batch linear kernel is the same product as nn.Linear, and swapping it in keeps
a model's parameters (tied ones included) and outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_causal_lm

from specdiff.models.small_batch_linear import SmallBatchLinear, small_batch_linear, use_small_batch_linear


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (1, 17), (3, 5), (1, 64), (1, 65), (2, 40)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_same_product_as_linear(shape, with_bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, 48, generator=generator)
    weight = torch.randn(96, 48, generator=generator)
    bias = torch.randn(96, generator=generator) if with_bias else None
    expected = F.linear(x, weight, bias)
    actual = small_batch_linear(x, weight, bias)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    if shape[0] * shape[1] == 1 or shape[0] * shape[1] > 64:
        assert torch.equal(actual, expected), "one row and long inputs must keep the ordinary kernel"


def test_gradients_flow_through_the_transposed_path():
    weight = torch.randn(8, 4, requires_grad=True)
    x = torch.randn(1, 3, 4, requires_grad=True)
    small_batch_linear(x, weight).sum().backward()
    torch.testing.assert_close(weight.grad, x.detach().reshape(3, 4).sum(0).expand(8, 4))
    torch.testing.assert_close(x.grad, weight.detach().sum(0).expand(1, 3, 4))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_swapping_keeps_parameters_and_outputs(kind):
    model = tiny_causal_lm(kind, seed=3)
    ids = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
    names_before = dict(model.named_parameters())
    use_small_batch_linear(model)
    assert isinstance(model.lm_head, SmallBatchLinear)
    assert isinstance(model.model.layers[0].mlp.down_proj, SmallBatchLinear)
    assert dict(model.named_parameters()).keys() == names_before.keys()
    assert all(parameter is names_before[name] for name, parameter in model.named_parameters())
    if kind == "qwen2":
        assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
