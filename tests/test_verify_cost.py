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
