"""A rerun into a folder of earlier work resumes exactly what it would have made, or refuses
and names the difference: never silently stale or incomplete results."""

import json
from dataclasses import asdict

import pytest

from specdiff.calibrate.teacher import TeacherConfig, generate_teacher_data
from specdiff.cli import main


def _bench_args(tiny_model_dir, tmp_path, rows):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return ["bench", "--dataset", "jsonl", "--data-path", str(prompts), "--verifier", str(tiny_model_dir),
            "--methods", "ar", "--max-new-tokens", "4", "--out", str(tmp_path / "bench")], prompts


def test_bench_refuses_records_of_an_edited_prompt_file(tiny_model_dir, tmp_path, capsys):
    rows = [{"id": "p0", "prompt": "def f(a):"}, {"id": "p1", "prompt": "x = 1"}]
    args, prompts = _bench_args(tiny_model_dir, tmp_path, rows)
    assert main(args) == 0
    assert main(args) == 0  # unchanged: resumes (nothing to do)
    capsys.readouterr()
    prompts.write_text("".join(json.dumps(row) + "\n" for row in [rows[0], {"id": "p1", "prompt": "y = 2"}]))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "'p1'" in err and "was the prompt file edited" in err and len(err.splitlines()) == 1


def test_bench_refuses_a_repeated_prompt_id(tiny_model_dir, tmp_path, capsys):
    args, _ = _bench_args(tiny_model_dir, tmp_path, [{"id": "a", "prompt": "x = 1"}, {"id": "a", "prompt": "y = 2"}])
    assert main(args) == 2
    assert "prompt id 'a' appears more than once" in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


@pytest.mark.parametrize("change, named", [({"max_new_tokens": 64}, "--max-new-tokens (128 there, 64 now)"),
                                           ({"seed": 3}, "--seed (0 there, 3 now)")])
def test_teacher_data_rerun_with_other_settings_is_refused(tmp_path, change, named):
    out = tmp_path / "teacher"
    out.mkdir()
    made = TeacherConfig(verifier=str(tmp_path / "no-such-model"), gsm8k=str(tmp_path / "none.jsonl"))
    (out / "config.json").write_text(json.dumps(asdict(made)))
    (out / "shard-00000.jsonl").write_text(json.dumps({"prompt_ids": [1], "completion_ids": [2]}) + "\n")
    with pytest.raises(ValueError, match="holds work made with other settings") as refused:
        generate_teacher_data(TeacherConfig(**{**asdict(made), **change}), out)
    assert named in str(refused.value)
    assert json.loads((out / "config.json").read_text()) == asdict(made), "the folder still says what made its shards"


def test_teacher_data_rerun_resumes_with_its_settings_and_refuses_others(tiny_model_dir, tmp_path, capsys):
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text("".join(json.dumps({"question": f"what is {i} plus {i}", "answer": "x"}) + "\n" for i in range(4)))
    out = tmp_path / "teacher"
    args = ["calibrate", "data", "--verifier", str(tiny_model_dir), "--gsm8k", str(gsm8k), "--num-prompts", "2",
            "--batch-size", "2", "--out", str(out)]
    assert main([*args, "--max-new-tokens", "4"]) == 0
    shards = {path.name: path.read_text() for path in out.glob("shard-*.jsonl")}
    assert main([*args, "--max-new-tokens", "4"]) == 0  # resumes: nothing left to make
    assert main([*args, "--max-new-tokens", "8"]) == 2
    assert "--max-new-tokens (4 there, 8 now)" in capsys.readouterr().err
    assert {path.name: path.read_text() for path in out.glob("shard-*.jsonl")} == shards
    assert json.loads((out / "config.json").read_text())["max_new_tokens"] == 4
