"""`specdiff bench-verify-cost` on a tiny model: every configuration measured, tries of the
asked size, a profile that adds up, and one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch

from specdiff.bench.verify_cost import trie_candidates
from specdiff.cli import main
from specdiff.verifier import build_trie


@pytest.mark.parametrize("num_nodes", range(1, 41))
def test_trie_candidates_have_exactly_the_asked_nodes(num_nodes):
    rows = trie_candidates(7, num_nodes, 4, 32, torch.Generator().manual_seed(num_nodes))
    if num_nodes < 5:
        assert rows is None
        return
    trie = build_trie(rows)
    assert len(trie.tokens) == num_nodes
    assert rows.shape[0] == 4 and (rows[:, 0] == 7).all()
    assert not trie.is_chain


def test_command_measures_both_kernels_at_every_size(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cost"
    assert main(["bench-verify-cost", "--verifier", str(tiny_model_dir), "--tokens", "1,2,6", "--repeats", "1",
                 "--prefill", "8", "--out", str(out)]) == 0
    result = json.loads((out / "verify_cost.json").read_text())
    measured = {(r["kernels"], r["shape"], r["tokens"]) for r in result["rows"]}
    kernels = ("transformers", "transposed", "specdiff")
    assert measured == {(k, "chain", n) for k in kernels for n in (1, 2, 6)} | {(k, "trie K=4", 6) for k in kernels}
    assert all(r["seconds"] > 0 and r["ratio"] == pytest.approx(r["seconds"] / r["roofline_s"]) for r in result["rows"])
    assert result["read_bytes_per_s"] > 1e8 and result["gemm_flop_per_s"] > 1e8
    for split in result["profile"].values():
        assert sum(split.values()) == pytest.approx(1.0)
    assert result["kernel_plans"], "the plans the specdiff kernels used are reported"
    assert "| 6 |" in (out / "verify_cost.md").read_text() and "| 6 |" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--tokens", "1,x"], ["--tokens", "0,4"], ["--repeats", "0"], ["--prefill", "1"]])
def test_bad_flags_get_one_line(tiny_model_dir, tmp_path, capsys, flags):
    assert main(["bench-verify-cost", "--verifier", str(tiny_model_dir), "--out", str(tmp_path), *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("specdiff: error:") and error.count("\n") == 1


def test_the_verify_cost_table_is_measured_once_per_machine_and_model_shape(tiny_causal_lm, tmp_path, monkeypatch):

    from specdiff.tree import cost_cache
    from specdiff.verifier import Verifier

    monkeypatch.setenv("SPECDIFF_CACHE", str(tmp_path))
    measured = []
    real = cost_cache.measure_verify_costs
    monkeypatch.setattr(cost_cache, "measure_verify_costs", lambda verifier, vocab: measured.append(verifier) or real(
        verifier, vocab, sizes=(1, 2, 3), repeats=1))
    two_layers = Verifier(tiny_causal_lm("llama", layers=2))
    first = cost_cache.cached_verify_costs(two_layers)
    again = cost_cache.cached_verify_costs(Verifier(tiny_causal_lm("llama", seed=5, layers=2)))  # same shape
    assert len(measured) == 1 and again.table == first.table and sorted(first.table) == [1, 2, 3]
    cost_cache.cached_verify_costs(Verifier(tiny_causal_lm("llama", layers=3)))  # another shape: its own entry
    assert len(measured) == 2
    path = tmp_path / cost_cache.COSTS_FILE
    stored = json.loads(path.read_text())
    assert len(stored) == 2
    stored[next(key for key in stored if "2 layers" in key)] = {"1": "slow"}  # damaged: measured again
    path.write_text(json.dumps(stored))
    cost_cache.cached_verify_costs(two_layers)
    assert len(measured) == 3
