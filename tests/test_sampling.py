import pytest
import torch

from specdiff.sampling import SamplingConfig, choose_tokens, logits_to_probs


def test_greedy_is_one_hot_argmax():
    probs = logits_to_probs(torch.tensor([[0.1, 2.0, -1.0]]), SamplingConfig(temperature=0))
    assert probs.tolist() == [[0.0, 1.0, 0.0]]


def test_temperature_scales_logits():
    logits = torch.log(torch.tensor([0.2, 0.3, 0.5]))
    probs = logits_to_probs(logits, SamplingConfig(temperature=0.5))
    expected = torch.tensor([0.04, 0.09, 0.25]) / 0.38
    assert torch.allclose(probs, expected, atol=1e-6)


def test_top_k_keeps_k_most_likely():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    probs = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert torch.allclose(probs, torch.tensor([0.0, 0.0, 3 / 7, 4 / 7]), atol=1e-6)


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    # 0.4 < 0.65, 0.4 + 0.3 >= 0.65: keep {0.4, 0.3}
    probs = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_p=0.65))
    assert torch.allclose(probs, torch.tensor([0.0, 0.0, 3 / 7, 4 / 7]), atol=1e-6)
    # a tiny top_p still keeps the most likely token
    probs = logits_to_probs(logits, SamplingConfig(temperature=1.0, top_p=0.01))
    assert probs.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_sampling_follows_generator():
    logits = torch.zeros(2, 5)
    sampling = SamplingConfig(temperature=1.0)
    first, _ = choose_tokens(logits, sampling, torch.Generator().manual_seed(7), 50)
    second, _ = choose_tokens(logits, sampling, torch.Generator().manual_seed(7), 50)
    third, _ = choose_tokens(logits, sampling, torch.Generator().manual_seed(8), 50)
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
])
def test_invalid_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)
