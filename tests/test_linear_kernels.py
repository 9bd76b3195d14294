"""Every linear kernel is the same product as nn.Linear; a plan picks one per row count; the
machine's plan is measured once and read back; swapping keeps a model's parameters (tied
ones included) and outputs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from specdiff import linear_kernels
from specdiff.linear_kernels import (
    PLAIN,
    ROW_BUCKETS,
    FastLinear,
    KernelPlan,
    available_kernels,
    fast_linear,
    kernel_plan,
    measure_kernel_plan,
    quantize_linears,
    use_fast_linear,
)


@pytest.mark.parametrize("kernel", available_kernels())
@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (1, 17), (3, 5), (1, 64), (1, 65), (2, 40)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_every_kernel_is_the_same_product(kernel, shape, with_bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, 48, generator=generator)
    weight = torch.randn(96, 48, generator=generator)
    bias = torch.randn(96, generator=generator) if with_bias else None
    expected = F.linear(x, weight, bias)
    actual = fast_linear(x, weight, bias, KernelPlan((kernel,) * len(ROW_BUCKETS)))
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    if kernel == "linear" or shape[0] * shape[1] > ROW_BUCKETS[-1]:
        assert torch.equal(actual, expected), "the plain plan and long inputs must keep transformers' kernel"


def test_a_plan_picks_by_row_count():
    assert ROW_BUCKETS[:4] == (1, 2, 3, 4) and ROW_BUCKETS[-1] == 64
    kernels = ("transposed", "onednn", "linear")
    plan = KernelPlan(tuple(kernels[i % 3] for i in range(len(ROW_BUCKETS))))
    for index, bucket in enumerate(ROW_BUCKETS):
        assert plan.kernel_for(bucket) == kernels[index % 3]
        if index and bucket - 1 > ROW_BUCKETS[index - 1]:  # a row count between two buckets takes the larger
            assert plan.kernel_for(bucket - 1) == kernels[index % 3]
    assert plan.kernel_for(65) == plan.kernel_for(1000) == "linear"
    with pytest.raises(ValueError, match="kernel plan"):
        KernelPlan(("linear",) * (len(ROW_BUCKETS) - 1))
    with pytest.raises(ValueError, match="kernel plan"):
        KernelPlan(("fast",) * len(ROW_BUCKETS))


def test_gradients_use_the_ordinary_kernel():
    weight = torch.randn(8, 4, requires_grad=True)
    x = torch.randn(1, 3, 4, requires_grad=True)
    fast_linear(x, weight, plan=KernelPlan(("onednn",) * len(ROW_BUCKETS))).sum().backward()
    torch.testing.assert_close(weight.grad, x.detach().reshape(3, 4).sum(0).expand(8, 4))
    torch.testing.assert_close(x.grad, weight.detach().sum(0).expand(1, 3, 4))


def test_measured_plan_names_a_measured_kernel_per_bucket():
    weights = [torch.randn(64, 32) for _ in range(2)]
    plan, timings = measure_kernel_plan(weights, repeats=1)
    assert set(timings) == set(ROW_BUCKETS)
    for rows, kernel in zip(ROW_BUCKETS, plan.by_bucket):
        assert kernel in timings[rows] and timings[rows][kernel] > 0
        assert kernel == "linear" or timings[rows][kernel] < 0.95 * timings[rows]["linear"]


def test_machine_plan_is_read_back_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDIFF_CACHE", str(tmp_path))
    monkeypatch.delenv("SPECDIFF_KERNELS", raising=False)
    monkeypatch.setattr(linear_kernels, "PLAN_MAX_WEIGHTS", 2)  # a fast measurement
    linear_kernels.machine_kernel_plan.cache_clear()
    try:
        measured = linear_kernels.machine_kernel_plan(64, 32)
        stored = json.loads((tmp_path / "kernel_plans.json").read_text())
        assert list(stored.values()) == [list(measured.by_bucket)]
        key = next(iter(stored))
        assert key.endswith("64x32")
        planted = ("transposed",) * len(ROW_BUCKETS)
        (tmp_path / "kernel_plans.json").write_text(json.dumps({key: planted}))
        linear_kernels.machine_kernel_plan.cache_clear()
        assert linear_kernels.machine_kernel_plan(64, 32).by_bucket == planted
        monkeypatch.setenv("SPECDIFF_KERNELS", "plain")
        linear_kernels.machine_kernel_plan.cache_clear()
        assert linear_kernels.machine_kernel_plan(64, 32) == PLAIN
    finally:
        linear_kernels.machine_kernel_plan.cache_clear()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_swapping_keeps_parameters_and_outputs(tiny_causal_lm, kind):
    model = tiny_causal_lm(kind, seed=3)
    ids = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
    names_before = dict(model.named_parameters())
    use_fast_linear(model)
    assert isinstance(model.lm_head, FastLinear)
    assert isinstance(model.model.layers[0].mlp.down_proj, FastLinear)
    assert dict(model.named_parameters()).keys() == names_before.keys()
    assert all(parameter is names_before[name] for name, parameter in model.named_parameters())
    if kind == "qwen2":
        assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        after = model(ids).logits
        with kernel_plan(model, PLAIN):
            assert model.lm_head.plan == PLAIN
            plain = model(ids).logits
    assert model.lm_head.plan is None, "the plan is restored after the block"
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert torch.equal(plain, before), "the plain plan is exactly transformers' model"


def test_int8_layers_compute_near_the_fp32_product_and_are_used(tiny_causal_lm):
    model = use_fast_linear(tiny_causal_lm("qwen2", seed=5))
    ids = torch.randint(0, 32, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(ids).logits
        assert quantize_linears(model) == len([m for m in model.modules() if isinstance(m, FastLinear)])
        after = model(ids).logits
    assert not torch.equal(after, before), "the int8 weights must be what computes"
    relative = (after - before).abs().max() / before.abs().max()
    assert relative < 0.1, f"int8 logits {relative:.3f} off the fp32 ones"


def test_plan_cache_survives_a_folder_in_its_place_and_absurd_nesting(tmp_path):
    from specdiff.machine_cache import read_entries, store_entry

    folder_in_the_way = tmp_path / "kernel_plans.json"
    folder_in_the_way.mkdir()
    store_entry(folder_in_the_way, "k", ["linear"] * len(linear_kernels.ROW_BUCKETS))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == [], "no .partial file left"
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    assert read_entries(nested) == {}


def _store_many(path, prefix, count):
    from specdiff.machine_cache import store_entry

    for index in range(count):
        store_entry(path, f"{prefix}{index}", ["linear"] * len(linear_kernels.ROW_BUCKETS))


def test_processes_storing_plans_at_once_keep_each_others_entries(tmp_path):
    import multiprocessing

    from specdiff.machine_cache import read_entries

    path = tmp_path / "kernel_plans.json"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_store_many, args=(path, name, 40)) for name in ("a", "b", "c")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert len(read_entries(path)) == 120, "every writer's entries were kept"
