"""Bad input gets a clear one-line error naming the problem."""

import json

import pytest
import torch

from specdiff import (
    AutoregressiveDrafter,
    DecodingConfig,
    DiffusionDrafter,
    SamplingConfig,
    Verifier,
    speculative_generate,
)
from specdiff.cli import main
from specdiff.drafters.standalone.from_causal_lm import diffusion_lm_from_causal_lm


@pytest.fixture(scope="module")
def verifier(tiny_causal_lm):
    return Verifier(tiny_causal_lm("llama", seed=0))


def test_empty_prompt(verifier):
    with pytest.raises(ValueError, match="prompt is empty"):
        speculative_generate(torch.zeros(1, 0, dtype=torch.long), verifier, AutoregressiveDrafter(verifier.model),
                             DecodingConfig())


def test_verifier_and_drafter_in_the_old_order_are_refused(verifier):
    with pytest.raises(ValueError, match=r"\(prompt_ids, verifier, drafter, config\)"):
        speculative_generate(torch.ones(1, 4, dtype=torch.long), AutoregressiveDrafter(verifier.model), verifier,
                             DecodingConfig())


def test_prompt_longer_than_context(verifier):
    with pytest.raises(ValueError, match="exceeds the verifier's context of 256"):
        speculative_generate(torch.ones(1, 250, dtype=torch.long), verifier, AutoregressiveDrafter(verifier.model),
                             DecodingConfig(max_new_tokens=20))


@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=0), "gamma"),
    (dict(num_drafts=0), "num_drafts"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_invalid_decoding_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodingConfig(**kwargs)


def test_invalid_steps(tiny_causal_lm):
    with pytest.raises(ValueError, match="steps"):
        DiffusionDrafter(diffusion_lm_from_causal_lm(tiny_causal_lm("qwen2")), steps=0)


def test_drafter_with_another_vocabulary(tiny_causal_lm, verifier):
    drafter = AutoregressiveDrafter(tiny_causal_lm("qwen2", vocab=40))
    with pytest.raises(ValueError, match=r"drafter's vocabulary \(40\) differs from the verifier's \(32\)"):
        speculative_generate(torch.tensor([[1, 2]]), verifier, drafter, DecodingConfig())


@pytest.mark.parametrize("flags, message", [
    (["--gamma", "0"], "gamma"),
    (["--steps", "0"], "steps"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.2"], "top_p"),
    (["--num-drafts", "0"], "num_drafts"),
])
def test_cli_reports_invalid_settings_in_one_line(capsys, flags, message):
    assert main(["generate", "--prompt", "hi", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("specdiff: error:") and message in err and len(err.splitlines()) == 1


def test_cli_reports_unknown_model(capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    missing.mkdir()
    assert main(["generate", "--verifier", str(missing), "--drafter", "none", "--prompt", "hi"]) == 2
    assert "cannot load" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "inf"], "--temperature/--top-k/--top-p: temperature must be a finite number"),
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--draft-temperature", "-1"], "--draft-temperature: temperature must be a finite number >= 0"),
])
def test_cli_names_the_flag_of_a_bad_temperature(capsys, flags, message):
    assert main(["generate", "--prompt", "hi", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_tiny_temperature_samples_the_argmax(verifier):
    from specdiff.sampling import choose_tokens

    logits = torch.tensor([[1.0, 3.0, 2.0], [50.0, -50.0, 49.0]])
    tokens, probs = choose_tokens(logits, SamplingConfig(temperature=1e-45), torch.Generator().manual_seed(0), 8)
    assert torch.isfinite(probs).all()
    assert tokens.tolist() == [[1] * 8, [0] * 8]


def test_whitespace_prompt_is_empty(tiny_tokenizer):

    from specdiff.prompting import encode_prompt

    with pytest.raises(ValueError, match="prompt is empty"):
        encode_prompt(tiny_tokenizer(), " \n\t ")


def test_prompt_ids_outside_the_verifiers_vocabulary(verifier):
    with pytest.raises(ValueError, match="token id 40, outside the verifier's vocabulary of 32"):
        speculative_generate(torch.tensor([[1, 40]]), verifier, AutoregressiveDrafter(verifier.model), DecodingConfig())


def test_mistyped_drafter_name_fails_at_once_without_the_hub(capsys, tiny_model_dir, monkeypatch):
    from specdiff.models import loading

    asked = []  # the Hub is asked once whether it is reachable, and nothing is retried
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout_s=3.0: asked.append(timeout_s) or False)
    code = main(["generate", "--verifier", str(tiny_model_dir), "--drafter", "specdiff-qwen2.5-coder-1.5", "--prompt", "hi"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(asked) == 1
    assert "'specdiff-qwen2.5-coder-1.5' is not a named model" in err
    assert "specdiff-qwen2.5-coder-1.5b" in err and "qwen2.5-coder-1.5b-instruct" in err and len(err.splitlines()) == 1


def test_missing_local_folder_is_named(capsys, tiny_model_dir):
    assert main(["generate", "--verifier", str(tiny_model_dir), "--drafter", "runs/x/final", "--prompt", "hi"]) == 2
    assert "no such folder: runs/x/final" in capsys.readouterr().err


def test_truncated_weights_name_the_damaged_folder(tmp_path, tiny_model_dir):
    import shutil

    from specdiff.models.loading import load_causal_lm
    from specdiff.models.prepare import ModelUnavailableError

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelUnavailableError, match=f"cannot load model from {damaged}"):
        load_causal_lm(str(damaged))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("specdiff: error:") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("command", ["generate", "bench"])
def test_a_fifo_datastore_is_refused_not_read(tmp_path, tiny_model_dir, capsys, command):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block until a writer comes: forever
    args = {"generate": ["generate", "--prompt", "hi", "--drafter", str(tiny_model_dir)],
            "bench": ["bench", "--dataset", "humaneval", "--methods", "ar", "--out", str(tmp_path / "out")]}[command]
    assert main([*args, "--verifier", str(tiny_model_dir), "--datastore", str(fifo)]) == 2
    assert "not a regular file or a folder" in _one_line_error(capsys)


def test_a_prompt_that_is_not_utf8_is_refused(capsys, tiny_model_dir):
    import os

    prompt = os.fsdecode(b"hi \xff\xfe")  # how undecodable command-line bytes reach Python
    assert main(["generate", "--verifier", str(tiny_model_dir), "--drafter", "none", "--prompt", prompt]) == 2
    assert "not valid UTF-8" in _one_line_error(capsys)


@pytest.mark.parametrize("row", [{"prompt": 5}, {"text": ["a"]}, {"prompt": "a", "completion": None}])
def test_datastore_rows_of_the_wrong_type_are_named(tiny_tokenizer, tmp_path, row):

    from specdiff.tree.datastore import index_datastore
    from specdiff.tree.suffix_index import SuffixIndex

    store = tmp_path / "store.jsonl"
    store.write_text(json.dumps("fine") + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="store.jsonl, line 2: expected a string"):
        index_datastore(store, tiny_tokenizer(), SuffixIndex(4))


def test_a_long_datastore_document_is_tokenized_in_pieces(tiny_tokenizer, tmp_path):

    from specdiff.tree import datastore
    from specdiff.tree.suffix_index import SuffixIndex

    text = ("abc def\n" * 30_000) + "x" * 100_000  # 340,000 characters, the last 100,000 without a newline
    store = tmp_path / "one.txt"
    store.write_text(text)
    tokenizer, lengths = tiny_tokenizer(), []
    encode = tokenizer.encode
    tokenizer.encode = lambda piece, **kw: lengths.append(len(piece)) or encode(piece, **kw)
    assert "".join(datastore._pieces(text)) == text
    index = SuffixIndex(4)
    datastore.index_datastore(store, tokenizer, index)
    assert index.documents == 1 and index.num_tokens == len(text)  # one token per character
    assert max(lengths) <= datastore.PIECE_CHARS and len(lengths) > 5


@pytest.mark.parametrize("rows, message", [
    ([{"answer": "1"}], "gsm8k.jsonl:1: the row has no 'question' field"),
    ([[1, 2]], "gsm8k.jsonl:1: each line must be a JSON object, got list"),
])
def test_calibrate_data_names_a_bad_gsm8k_row(tmp_path, capsys, rows, message):
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "teacher"
    assert main(["calibrate", "data", "--gsm8k", str(gsm8k), "--num-prompts", "2", "--out", str(out)]) == 2
    assert message in _one_line_error(capsys) and not out.exists()


def test_teacher_shard_with_string_token_ids_is_refused(tmp_path):
    from specdiff.calibrate.teacher import read_shards

    (tmp_path / "shard-00000.jsonl").write_text(json.dumps({"prompt_ids": ["a"], "completion_ids": ["b", "c"]}) + "\n")
    with pytest.raises(ValueError, match="shard-00000.jsonl line 1 is not a teacher record"):
        read_shards(tmp_path)


@pytest.mark.parametrize("change, message", [({"num_layers": "two"}, "num_layers must be a whole number"),
                                             ({"base": 3}, "base must name a model"),
                                             ({"lora": {"r": "8", "alpha": 16}}, "lora must be an object")])
def test_drafter_config_of_the_wrong_type_is_named(tmp_path, tiny_model_dir, capsys, change, message):
    from specdiff.drafters.standalone.files import save_drafter

    folder = tmp_path / "drafter"
    save_drafter(folder, {"mask_embedding": torch.zeros(32)}, {"base": str(tiny_model_dir), "num_layers": 2, **change})
    assert main(["generate", "--verifier", str(tiny_model_dir), "--drafter", str(folder), "--prompt", "hi"]) == 2
    assert message in _one_line_error(capsys)


def test_damaged_drafter_deltas_are_named(tmp_path, tiny_model_dir, capsys):
    from specdiff.calibrate.train import TrainConfig, build_drafter_network
    from specdiff.drafters.standalone.files import save_drafter

    folder = tmp_path / "drafter"
    save_drafter(folder, {"mask_embedding": torch.zeros(32)}, {"base": str(tiny_model_dir), "num_layers": 2})
    deltas = folder / "deltas.safetensors"
    deltas.write_bytes(deltas.read_bytes()[:40])
    assert main(["generate", "--verifier", str(tiny_model_dir), "--drafter", str(folder), "--prompt", "hi"]) == 2
    assert "deltas.safetensors: damaged or missing weights" in _one_line_error(capsys)
    with pytest.raises(ValueError, match="deltas.safetensors: damaged or missing weights"):
        build_drafter_network(TrainConfig(base=str(tiny_model_dir), num_layers=2, init_from=str(folder)))


def test_a_verifier_with_hostile_pickled_weights_is_refused_in_our_words(RunsCode, tiny_causal_lm, tmp_path, tiny_model_dir, capsys):
    import shutil


    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({**tiny_causal_lm("qwen2", seed=4).state_dict(), "x": RunsCode(marker)}, folder / "pytorch_model.bin")
    assert main(["generate", "--verifier", str(folder), "--drafter", "none", "--prompt", "hi"]) == 2
    err = _one_line_error(capsys)
    assert "never unpickles" in err and "weights_only" not in err and not marker.exists()


def test_calibrate_eval_out_naming_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["calibrate", "eval", "--drafters", "x", "--out", str(target)]) == 2
    assert "is a file" in _one_line_error(capsys) and target.read_text() == "x"


@pytest.mark.parametrize("flags, message", [
    (["--drafter", "none", "--datastore", "{store}"], "--drafter none decodes plainly"),
    (["--seed", "99999999999999999999999"], "--seed must be in 0..2**63-1"),
    (["--seed", "-1"], "--seed must be in 0..2**63-1"),
    (["--gamma", "100000"], "exceeds the verifier's context of 256 tokens"),
])
def test_impossible_flags_are_refused_before_any_model_loads(tmp_path, tiny_model_dir, capsys, monkeypatch, flags,
                                                            message):
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    (tmp_path / "store.txt").write_text("abc")
    flags = [flag.format(store=tmp_path / "store.txt") for flag in flags]
    assert main(["generate", "--verifier", str(tiny_model_dir), "--prompt", "hi", *flags]) == 2
    assert message in _one_line_error(capsys)


@pytest.mark.parametrize("flag", ["--batch-size", "--num-prompts", "--max-new-tokens", "--completions-per-prompt"])
def test_calibrate_data_refuses_zero_counts_before_loading(tmp_path, capsys, flag):
    out = tmp_path / "teacher"
    assert main(["calibrate", "data", flag, "0", "--out", str(out)]) == 2
    assert f"{flag} must be >= 1" in _one_line_error(capsys) and not out.exists()


def test_an_unknown_kernel_mode_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("SPECDIFF_KERNELS", "fastest")
    assert main(["generate", "--prompt", "hi"]) == 2
    assert "SPECDIFF_KERNELS='fastest'" in _one_line_error(capsys)
