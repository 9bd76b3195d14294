"""Drafter training on tiny models: losses, windows, exact resume, DDP with 2 processes."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specdiff.calibrate.losses import ce_loss, ce_streak_loss, expected_streak, streak_loss
from specdiff.calibrate.train import TrainConfig, train
from specdiff.calibrate.windows import make_full_windows, make_windows
from specdiff.drafters.loading import load_drafter


def test_streak_loss_is_minus_expected_accepted_length():
    log_q = torch.log(torch.tensor([[0.5, 0.5, 1.0]]))
    valid = torch.ones(1, 3)
    # 0.5 + 0.25 + 0.25
    assert torch.isclose(streak_loss(log_q, valid), torch.tensor(-1.0))
    assert torch.isclose(expected_streak(log_q, valid), torch.tensor(1.0))
    # slots past the end of a sequence contribute nothing
    assert torch.isclose(streak_loss(log_q, torch.tensor([[1.0, 1.0, 0.0]])), torch.tensor(-0.75))


def test_ce_streak_weights_each_slot_by_reaching_it():
    log_q = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    loss = ce_streak_loss(log_q, torch.ones(1, 2))
    expected = -(1.0 * torch.log(torch.tensor(0.5)) + 0.5 * torch.log(torch.tensor(0.25)))
    assert torch.isclose(loss, expected)
    loss.backward()
    assert torch.allclose(log_q.grad, torch.tensor([[-1.0, -0.5]]))  # the weights are not differentiated


def test_ce_is_mean_over_valid_slots():
    log_q = torch.log(torch.tensor([[0.5, 0.25, 0.1]]))
    assert torch.isclose(ce_loss(log_q, torch.tensor([[1.0, 1.0, 0.0]])), -(log_q[0, :2].sum() / 2))


def test_windows_see_their_prefix_and_themselves_only():
    ids = torch.arange(10, 20)
    batch = make_windows(ids, torch.tensor([2, 7]), gamma=4, mask_token_id=99)
    assert batch.block_ids.tolist() == [[12, 99, 99, 99], [17, 99, 99, 99]]
    assert batch.targets[0].tolist() == [13, 14, 15, 16]
    assert batch.valid[1].tolist() == [1, 1, 0, 0]  # ids end at 19
    assert batch.positions[1].tolist() == [7, 8, 9, 10]
    visible = batch.attn_mask[0].int()
    assert visible[:, :10].sum(-1).tolist() == [2, 2, 2, 2]  # prefix ids[:2]
    assert visible[0, 10:].tolist() == [1, 0, 0, 0] and visible[2, 10:].tolist() == [1, 1, 1, 1]


@pytest.fixture()
def tiny_run(random_teacher_shard, tiny_model_dir, tmp_path):
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text("".join(json.dumps({"question": f"what is {i} plus {i}", "answer": f"it is {2 * i}"}) + "\n"
                             for i in range(20)))
    code = tmp_path / "code"
    code.mkdir()
    (code / "mod.py").write_text("def add(a, b):\n    x = a\n    y = b\n    z = x\n    return z + y\n")
    teacher = random_teacher_shard(tmp_path / "teacher")
    return TrainConfig(base=str(tiny_model_dir), num_layers=2, gamma=4, gsm8k=str(gsm8k), code_root=str(code),
                       teacher=str(teacher), adapt_steps=3, align_steps=3, lora_rank=4, lora_alpha=8,
                       lr=1e-2, windows_per_step=4, checkpoint_every=2)


def test_interrupted_training_resumes_exactly(tiny_run, tmp_path):
    straight = train(tiny_run, tmp_path / "straight")
    assert train(tiny_run, tmp_path / "resumed", stop_after=4) is None  # interrupted mid alignment
    assert (tmp_path / "resumed" / "checkpoint-000004" / "trainer.pt").is_file()
    resumed = train(tiny_run, tmp_path / "resumed")
    first, second = load_file(str(straight / "deltas.safetensors")), load_file(str(resumed / "deltas.safetensors"))
    assert first.keys() == second.keys() and any(k.endswith("lora_B") for k in first)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(float(first[k].abs().sum()) > 0 for k in first if k.endswith("lora_B"))  # training moved them
    drafter, _ = load_drafter(str(straight))
    assert drafter.network.config.num_hidden_layers == 2
    log = [json.loads(line) for line in (tmp_path / "straight" / "train.log").read_text().splitlines()]
    assert [row["stage"] for row in log] == ["adapt"] * 3 + ["align"] * 3


@pytest.mark.heavy  # two processes under torchrun
def test_two_process_ddp_training(tiny_run, tmp_path):
    out = tmp_path / "ddp"
    cfg = tiny_run
    flags = ["--base", cfg.base, "--num-layers", "2", "--gamma", "4", "--gsm8k", cfg.gsm8k, "--code-root", cfg.code_root,
             "--teacher", cfg.teacher, "--adapt-steps", "2", "--align-steps", "2", "--lora-rank", "4",
             "--lora-alpha", "8", "--windows-per-step", "4", "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "-m", "specdiff.cli", "calibrate", "train", "--out", str(out), *flags],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len((out / "train.log").read_text().splitlines()) == 4
    # one process averaging the losses of both ranks' data computes the same gradients
    settings = TrainConfig(**json.loads((out / "config.json").read_text()))  # exactly the DDP run's
    train(replace(settings, data_ranks=2), tmp_path / "single")
    train(settings, tmp_path / "rank0-only")  # rank 0's data alone: a different gradient

    def weights(run):  # checkpoints keep fp32 (the final drafter is bf16)
        return load_file(str(run / "checkpoint-000004" / "deltas.safetensors"))

    ddp, single, rank0 = weights(out), weights(tmp_path / "single"), weights(tmp_path / "rank0-only")
    assert ddp.keys() == single.keys()
    gap = max(float((ddp[n] - single[n]).abs().max()) for n in ddp)
    other = max(float((ddp[n] - rank0[n]).abs().max()) for n in ddp)
    assert gap < 1e-5 < other / 10, (gap, other)
    changed = [n for n in ddp if not torch.equal(ddp[n], load_file(str(out / "checkpoint-000002" / "deltas.safetensors"))[n])]
    assert changed  # training moved the weights, so equality is not trivial


def test_checkpoint_that_would_run_code_is_refused(RunsCode, tiny_run, tmp_path):
    out = tmp_path / "run"
    assert train(tiny_run, out, stop_after=2) is None
    marker = tmp_path / "pwned"
    torch.save({"step": 2, "payload": RunsCode(marker)}, out / "checkpoint-000002" / "trainer.pt")
    with pytest.raises(ValueError, match="refusing to resume: .*trainer.pt: holds Python objects") as refused:
        train(tiny_run, out)
    assert not marker.exists()
    assert "weights_only" not in str(refused.value), "never pass on torch's advice to load it unsafely"


def test_resume_with_other_model_flags_is_refused_before_anything_is_written(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(tiny_run, out, stop_after=2) is None
    saved = (out / "config.json").read_text()
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"--lora-rank \(4 there, 8 now\)"):
        train(replace(tiny_run, lora_rank=8), out)
    assert (out / "config.json").read_text() == saved
    assert train(replace(tiny_run, align_steps=4), out, stop_after=1) is None  # more steps is fine


def test_run_folder_that_is_a_file_is_refused(tiny_run, tmp_path):
    from specdiff.cli import main

    target = tmp_path / "file"
    target.write_text("")
    assert main(["calibrate", "train", "--out", str(target), "--base", tiny_run.base]) == 2


def test_teacher_data_refusals_leave_nothing_behind(tmp_path, capsys):
    from specdiff.calibrate.teacher import TeacherConfig, read_shards
    from specdiff.cli import main

    out = tmp_path / "teacher"
    assert main(["calibrate", "data", "--gsm8k", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "GSM8K file not found" in capsys.readouterr().err and not out.exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["calibrate", "data", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "x"
    assert TeacherConfig(engine="vllm").temperature == 0 and TeacherConfig().temperature == 0.5
    with pytest.raises(ValueError, match="greedy data only"):
        TeacherConfig(engine="vllm", temperature=0.5)
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "shard-00000.jsonl").write_text('{"prompt_ids": [1], "completion_ids": [2, 3]}\n{"prompt_ids": [1], "comp')
    with pytest.raises(ValueError, match="shard-00000.jsonl line 2 is not a teacher record"):
        read_shards(torn)


def test_full_windows_are_separate_bidirectional_sequences():
    ids = torch.arange(10, 20)
    batch = make_full_windows(ids, torch.tensor([2, 5]), gamma=3, mask_token_id=99)
    assert batch.block_ids.tolist() == [[10, 11, 12, 99, 99, 99, 99, 99, 99], [10, 11, 12, 13, 14, 15, 99, 99, 99]]
    assert batch.rows.tolist() == [[2, 3, 4], [5, 6, 7]]  # the last committed token predicts slot 0
    assert batch.targets.tolist() == [[13, 14, 15], [16, 17, 18]]
    assert batch.attn_mask[0].int().sum(-1).tolist() == [6] * 9  # its 3 tokens and 3 masks, from every row
    assert batch.attn_mask[1, 0].all()


def test_calibrate_train_runs_on_a_dream_architecture_drafter(tiny_causal_lm, tiny_run, tmp_path):
    """Streak distillation with peft LoRA on a Dream-architecture checkpoint (the tiny fixture
    built with Dream's own code), through the CLI; the result drafts losslessly."""
    from specdiff import DecodingConfig, Verifier, autoregressive_generate, speculative_generate
    from specdiff.cli import main
    from specdiff.drafters.standalone.drafter import DiffusionDrafter

    dream = Path(__file__).parent / "fixtures" / "dream" / "dream-tiny-gqa"
    out = tmp_path / "dream-run"
    assert main(["calibrate", "train", "--base", str(dream), "--gamma", "4", "--gsm8k", tiny_run.gsm8k,
                 "--code-root", tiny_run.code_root, "--teacher", tiny_run.teacher, "--adapt-steps", "2",
                 "--align-steps", "2", "--lora-rank", "4", "--lora-alpha", "8", "--lr", "1e-2",
                 "--windows-per-step", "3", "--checkpoint-every", "2", "--out", str(out)]) == 0
    deltas = load_file(str(out / "final" / "deltas.safetensors"))
    assert "layers.1.mlp.down_proj.lora_B" in deltas and "mask_embedding" not in deltas  # Dream's mask is a token
    assert any(float(t.abs().sum()) > 0 for name, t in deltas.items() if name.endswith("lora_B"))
    verifier = Verifier(tiny_causal_lm("llama", seed=0, logit_scale=30.0))
    drafter, _ = load_drafter(str(out / "final"), verifier_model=verifier.model)
    assert isinstance(drafter, DiffusionDrafter) and drafter.network.bidirectional and drafter.network.lora
    prompt, config = torch.tensor([[1, 2, 3, 4]]), DecodingConfig(gamma=3, max_new_tokens=16)
    assert speculative_generate(prompt, verifier, drafter, config).tokens == \
        autoregressive_generate(prompt, verifier, config).tokens
