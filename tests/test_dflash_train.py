"""Training a DFlash-layout drafter on tiny models: blocks, loss, initialisation, exact resume."""

import json
import random
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from specdiff.calibrate.dflash_train import DFlashTrainConfig, build_dflash_network, train_dflash
from specdiff.calibrate.losses import ce_decay_loss
from specdiff.calibrate.windows import make_anchor_blocks
from specdiff.drafters.conditioned.files import is_dflash_folder
from specdiff.drafters.loading import load_drafter


def test_anchor_blocks_see_the_context_before_their_anchor_and_themselves():
    ids = torch.arange(10, 20)
    blocks = make_anchor_blocks(ids, torch.tensor([0, 3, 8]), gamma=3, mask_token_id=99)
    assert blocks.block_ids.tolist() == [[10, 99, 99, 99], [13, 99, 99, 99], [18, 99, 99, 99]]
    assert blocks.positions[1].tolist() == [3, 4, 5, 6]
    assert blocks.targets.tolist() == [[11, 12, 13], [14, 15, 16], [19, 0, 0]]
    assert blocks.valid.tolist() == [[1, 1, 1], [1, 1, 1], [1, 0, 0]]
    assert blocks.attn_mask.shape == (3, 4, 14)
    assert blocks.attn_mask[1, :, :10].sum(-1).tolist() == [3, 3, 3, 3]  # context positions 0, 1, 2
    assert not blocks.attn_mask[0, :, :10].any()
    assert blocks.attn_mask[:, :, 10:].all()  # the whole block, in both directions


def test_ce_decay_weights_later_slots_less():
    log_q = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    valid = torch.ones(1, 3)
    weights = torch.exp(-torch.arange(3.0) / 7)
    assert torch.isclose(ce_decay_loss(log_q, valid), -torch.log(torch.tensor(0.5)))
    skewed = torch.log(torch.tensor([[0.9, 0.5, 0.1]]))
    expected = -(weights * skewed[0]).sum() / weights.sum()
    assert torch.isclose(ce_decay_loss(skewed, valid), expected)


@pytest.fixture
def tiny_dflash_run(random_teacher_shard, tiny_model_dir, tmp_path):
    teacher = random_teacher_shard(tmp_path / "teacher")
    return DFlashTrainConfig(verifier=str(tiny_model_dir), teacher=str(teacher), num_layers=1, gamma=4, steps=6,
                             anchors_per_step=4, lr=1e-2, checkpoint_every=2)


def test_initialisation_copies_the_verifiers_last_layers(tiny_dflash_run, tiny_model_dir):
    from specdiff.models.loading import load_causal_lm

    verifier, _ = load_causal_lm(str(tiny_model_dir))
    network = build_dflash_network(tiny_dflash_run, verifier, torch.arange(12))
    assert network.config.attention_bias  # Qwen2's q/k/v biases are kept
    last = verifier.model.layers[-1]
    assert torch.equal(network.layers[0].mlp.down_proj.weight, last.mlp.down_proj.weight)
    assert torch.equal(network.layers[0].self_attn.q_proj.bias, last.self_attn.q_proj.bias)
    assert torch.equal(network.hidden_norm.weight, last.input_layernorm.weight)
    q_norm = network.layers[0].self_attn.q_norm.weight.detach()  # the copied layer's query scale, not 1
    assert len(set(q_norm.tolist())) == 1 and float(q_norm[0]) > 0 and float(q_norm[0]) != 1.0
    random = build_dflash_network(replace(tiny_dflash_run, init="random"), verifier)
    assert not torch.equal(random.layers[0].mlp.down_proj.weight, last.mlp.down_proj.weight)


def test_interrupted_training_resumes_exactly(tiny_causal_lm, tiny_dflash_run, tmp_path):
    straight = train_dflash(tiny_dflash_run, tmp_path / "straight")
    assert train_dflash(tiny_dflash_run, tmp_path / "resumed", stop_after=3) is None
    resumed = train_dflash(tiny_dflash_run, tmp_path / "resumed")
    assert is_dflash_folder(straight) and is_dflash_folder(resumed)
    first, second = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert len((tmp_path / "straight" / "train.log").read_text().splitlines()) == 6
    drafter, _ = load_drafter(str(straight), verifier_model=tiny_causal_lm("qwen2", seed=4))
    assert drafter.feature_layers == (1,)


def test_a_resumed_log_holds_each_step_once(tiny_dflash_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    assert train_dflash(tiny_dflash_run, out, stop_after=3) is None  # checkpoints at steps 2 and 3
    shutil.rmtree(out / "checkpoint-000003")  # as if killed after logging step 3, before its checkpoint
    with open(out / "train.log", "a") as log:
        log.write('{"step": 4, "loss": 1.')  # and in the middle of a line
    train_dflash(tiny_dflash_run, out)
    steps = [json.loads(line)["step"] for line in (out / "train.log").read_text().splitlines()
             if "heldout_tau" not in line]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_training_learns_a_sequence(tiny_causal_lm, tiny_tokenizer, tiny_dflash_run, tmp_path):
    """A verifier with a sharp LM head (the drafter trains through it, frozen) and one
    sequence to learn: the loss must fall well below its start."""

    sharp = tmp_path / "sharp-verifier"
    tiny_causal_lm("qwen2", seed=4, logit_scale=30.0).save_pretrained(sharp)
    tiny_tokenizer().save_pretrained(sharp)
    one = tmp_path / "one"
    one.mkdir()
    record = {"prompt_ids": [1, 2, 3], "completion_ids": [5, 9, 5, 9, 7, 7, 5, 9, 5, 9, 7, 7]}
    (one / "shard-00000.jsonl").write_text(json.dumps(record) + "\n")
    train_dflash(replace(tiny_dflash_run, verifier=str(sharp), teacher=str(one), steps=30, warmup_steps=1,
                         checkpoint_every=30),
                 tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "train.log").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0], [round(x, 2) for x in losses]


def test_resume_with_another_loss_is_refused(tiny_dflash_run, tmp_path):
    assert train_dflash(tiny_dflash_run, tmp_path / "run", stop_after=2) is None
    with pytest.raises(ValueError, match=r"--loss \('ce_decay' there, 'streak' now\)"):
        train_dflash(replace(tiny_dflash_run, loss="streak"), tmp_path / "run")


def test_feature_cache_changes_nothing_but_the_cost(tiny_dflash_run, tmp_path):
    plain = train_dflash(tiny_dflash_run, tmp_path / "plain")
    cached_cfg = replace(tiny_dflash_run, feature_cache=str(tmp_path / "features"))
    cached = train_dflash(cached_cfg, tmp_path / "cached")
    assert len(list((tmp_path / "features").glob("*.safetensors"))) >= 2  # 6 draws from 5 records
    again = train_dflash(cached_cfg, tmp_path / "again")  # every sequence read back from the cache
    first, second, third = (load_file(str(f / "model.safetensors")) for f in (plain, cached, again))
    assert all(torch.equal(first[k], second[k]) and torch.equal(first[k], third[k]) for k in first)


def test_a_damaged_feature_cache_entry_is_recomputed(tiny_dflash_run, tmp_path, capsys):
    cached_cfg = replace(tiny_dflash_run, feature_cache=str(tmp_path / "features"))
    reference = train_dflash(cached_cfg, tmp_path / "first")
    entries = sorted((tmp_path / "features").glob("*.safetensors"))
    entries[0].write_bytes(entries[0].read_bytes()[:50])
    again = train_dflash(cached_cfg, tmp_path / "again")
    assert f"feature cache entry {entries[0]} is damaged" in capsys.readouterr().err
    first, second = (load_file(str(f / "model.safetensors")) for f in (reference, again))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert entries[0].stat().st_size > 50, "the entry was written anew"


def test_a_shipped_drafter_is_rebuilt_from_its_deltas_and_the_verifier(tiny_dflash_run, tiny_model_dir, tmp_path):
    from specdiff.drafters.conditioned.shipped import build_from_shipped, write_shipped
    from specdiff.models.loading import load_causal_lm

    verifier, _ = load_causal_lm(str(tiny_model_dir))
    network = build_dflash_network(tiny_dflash_run, verifier, torch.arange(12))
    with torch.no_grad():  # "training": a rank-2 change of one copied matrix, and a new fc
        network.layers[0].mlp.up_proj.weight.add_(torch.randn(64, 2) @ torch.randn(2, 32))
        network.fc.weight.normal_()
    from specdiff.drafters.conditioned.files import save_dflash

    trained = save_dflash(network, tmp_path / "trained")
    last = verifier.config.num_hidden_layers - 1
    size = write_shipped(tmp_path / "shipped", trained, str(tiny_model_dir), [last], rank=2, card={"steps": 0},
                         max_bytes=1e9)
    assert size < sum(p.stat().st_size for p in trained.iterdir())
    built = build_from_shipped(tmp_path / "shipped", tmp_path / "cache" / "drafter")
    original, rebuilt = load_file(str(trained / "model.safetensors")), load_file(str(built / "model.safetensors"))
    assert original.keys() == rebuilt.keys()
    for name in original:  # bf16 storage: close, and exact where training changed nothing but rank 2
        assert torch.allclose(original[name], rebuilt[name], atol=2e-2, rtol=2e-2), name
    drafter, _ = load_drafter(str(built), verifier_model=verifier)
    assert drafter.network.fc.weight.shape == network.fc.weight.shape
    stamp = (built / "built-from.json").stat().st_mtime_ns
    assert build_from_shipped(tmp_path / "shipped", built) == built  # built once
    assert (built / "built-from.json").stat().st_mtime_ns == stamp


def test_held_out_records_are_not_trained_on_and_their_acceptance_is_logged(tiny_dflash_run, tmp_path):
    from specdiff.calibrate.data import TeacherSequences
    from specdiff.calibrate.teacher import read_shards

    records = read_shards(tiny_dflash_run.teacher)
    train_part, held = TeacherSequences(records, 64).split(2)
    assert train_part.records == records[:-2] and held.records == records[-2:]
    with pytest.raises(ValueError, match="leaves no training data"):
        TeacherSequences(records, 64).split(len(records))
    out = tmp_path / "run"
    train_dflash(replace(tiny_dflash_run, holdout_records=2), out)
    notes = [json.loads(line) for line in (out / "train.log").read_text().splitlines() if "heldout_tau" in line]
    assert [n["step"] for n in notes] == [2, 4, 6]
    for note in notes:
        accept = note["heldout_accept"]
        assert len(accept) == tiny_dflash_run.gamma and all(a >= b for a, b in zip(accept, accept[1:]))
        assert note["heldout_tau"] == pytest.approx(1 + sum(accept), abs=1e-2)


def test_ship_command_refuses_a_drafter_over_the_size_limit(tiny_dflash_run, tiny_model_dir, tmp_path, capsys):
    from specdiff.cli import main
    from specdiff.drafters.conditioned.files import save_dflash
    from specdiff.models.loading import load_causal_lm

    verifier, _ = load_causal_lm(str(tiny_model_dir))
    trained = save_dflash(build_dflash_network(replace(tiny_dflash_run, init="random"), verifier), tmp_path / "trained")
    common = ["calibrate", "ship-dflash", "--drafter", str(trained), "--verifier", str(tiny_model_dir)]
    assert main([*common, "--out", str(tmp_path / "small")]) == 0
    assert main([*common, "--out", str(tmp_path / "big"), "--max-mb", "0.001"]) == 2
    assert "over --max-mb 0.001" in capsys.readouterr().err
    assert not (tmp_path / "big").exists(), "a refused drafter must leave nothing behind"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main([*common[:3], str(tmp_path), *common[4:], "--out", str(tmp_path / "x")]) == 2
    assert "is not a DFlash folder" in capsys.readouterr().err


def test_a_training_vocabulary_is_the_full_softmax_renormalised_over_its_rows(tiny_dflash_run, tiny_model_dir):
    from specdiff.calibrate.data import TeacherSequences, window_starts
    from specdiff.calibrate.dflash_train import BlockObjective, training_vocabulary
    from specdiff.calibrate.teacher import read_shards
    from specdiff.models.loading import load_causal_lm

    verifier, _ = load_causal_lm(str(tiny_model_dir))
    records = read_shards(tiny_dflash_run.teacher)
    vocabulary = training_vocabulary(verifier.config.vocab_size, 4, records)
    seen = {t for r in records for t in r["prompt_ids"] + r["completion_ids"]}
    assert vocabulary.tolist() == sorted(set(range(4)) | seen)
    assert training_vocabulary(verifier.config.vocab_size, 0, records) is None
    network = build_dflash_network(replace(tiny_dflash_run, init="random"), verifier)
    sequence = TeacherSequences(records, 64).sequence(0)
    blocks = make_anchor_blocks(sequence.ids, window_starts(sequence, 4, random.Random(0)), 4,
                                network.mask_token_id)
    reduced = BlockObjective(network, verifier, vocabulary=vocabulary)
    _, log_q_reduced, _ = reduced(sequence.ids, blocks, "ce_decay")
    _, log_q_full, _ = reduced(sequence.ids, blocks, "ce_decay", full_vocabulary=True)
    assert torch.allclose(log_q_full, BlockObjective(network, verifier)(sequence.ids, blocks, "ce_decay")[1])
    # fewer rows: each target keeps its logit and loses competitors, so its log-probability rises
    assert (log_q_reduced >= log_q_full - 1e-5).all() and not torch.allclose(log_q_reduced, log_q_full)
    everything = BlockObjective(network, verifier, vocabulary=torch.arange(verifier.config.vocab_size))
    assert torch.allclose(everything(sequence.ids, blocks, "ce_decay")[1], log_q_full, atol=1e-5)


def test_filtered_teacher_records_are_counted_and_said(tiny_dflash_run, tmp_path, capsys):
    from specdiff.calibrate.data import TeacherSequences
    from specdiff.calibrate.teacher import read_shards

    records = read_shards(tiny_dflash_run.teacher)  # 5 records: 6 prompt + 20 completion tokens
    odd = [dict(records[0], prompt_ids=records[0]["prompt_ids"] * 10), dict(records[1], completion_ids=[1])]
    kept = TeacherSequences(records[2:] + odd, 20)
    assert len(kept.records) == 3
    assert kept.filtering == ("left out 2 of 5 teacher records: 1 whose prompt leaves no room for a completion within "
                              "--max-seq-len 20 and 1 with fewer than 2 completion tokens; cut 3 longer records to "
                              "their first 20 tokens")
    assert TeacherSequences(records, 64).filtering is None
    folder = tmp_path / "odd-teacher"
    folder.mkdir()
    (folder / "shard-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:4] + odd[:1]))
    train_dflash(replace(tiny_dflash_run, teacher=str(folder), steps=2, max_seq_len=40), tmp_path / "run")
    assert "left out 1 of 5 teacher records" in capsys.readouterr().err


def test_teacher_ids_outside_the_vocabulary_are_refused_in_one_line(tiny_dflash_run, tmp_path):
    from specdiff.calibrate.data import TeacherSequences
    from specdiff.calibrate.teacher import read_shards

    records = read_shards(tiny_dflash_run.teacher)
    records[3] = dict(records[3], completion_ids=records[3]["completion_ids"][:-1] + [10_000])
    with pytest.raises(ValueError, match="teacher record 3 holds token id 10000, outside the verifier's vocabulary"):
        TeacherSequences(records, 64, vocab_size=32)


@pytest.mark.parametrize("field, value", [("train_vocab", -5), ("holdout_records", -2), ("warmup_steps", -1),
                                          ("max_seq_len", 3)])
def test_negative_settings_are_refused(tiny_dflash_run, field, value):
    with pytest.raises(ValueError, match="--" + field.replace("_", "-")):
        replace(tiny_dflash_run, **{field: value})


def test_ship_command_refuses_bad_input_before_writing(RunsCode, tiny_dflash_run, tiny_model_dir, tmp_path, capsys):

    from specdiff.cli import main
    from specdiff.drafters.conditioned.files import save_dflash
    from specdiff.models.loading import load_causal_lm

    verifier, _ = load_causal_lm(str(tiny_model_dir))
    trained = save_dflash(build_dflash_network(replace(tiny_dflash_run, init="random"), verifier), tmp_path / "trained")
    common = ["calibrate", "ship-dflash", "--drafter", str(trained), "--verifier", str(tiny_model_dir)]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "card.json").write_text("{not json")
    capsys.readouterr()
    cases = [(["--rank", "-1"], "--rank must be >= 1"), (["--out", str(a_file)], "is a file"),
             (["--card", str(tmp_path / "card.json")], "card.json: not a readable JSON file"),
             (["--source-layers", "a,b"], "--source-layers takes comma-separated layer ids")]
    for flags, message in cases:
        out = ["--out", str(tmp_path / "out")] if "--out" not in flags else []
        assert main([*common, *out, *flags]) == 2, flags
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
    marker = tmp_path / "ran"
    torch.save({"mask_token_id": 0, "embedding": RunsCode(marker)}, trained / "mask_embedding.pt")
    assert main([*common, "--out", str(tmp_path / "out")]) == 2
    assert "not a plain tensor file" in capsys.readouterr().err and not marker.exists()
    (trained / "mask_embedding.pt").unlink()
    weights = trained / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main([*common, "--out", str(tmp_path / "out")]) == 2
    assert "damaged weights" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and a_file.read_text() == "x"


def test_target_layers_outside_the_verifier_are_refused_before_the_run_folder_exists(tiny_dflash_run, tmp_path):
    with pytest.raises(ValueError, match="--target-layers 0,99 names layers outside"):
        train_dflash(replace(tiny_dflash_run, target_layers="0,99"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
