"""`specdiff bench` end to end on tiny models: records, summary, plots, equality check."""

import json
from pathlib import Path

import pytest
import torch

from specdiff.bench.report import acceptance_by_position, markdown_table, summarize
from specdiff.cli import main
from specdiff.drafters.standalone.files import save_drafter


def test_acceptance_by_position_counts_drafted_slots():
    records = [{"drafted": [3, 3, 1], "accepted_lengths": [4, 1, 2]}]
    # slot 0 accepted in calls 1 and 3 of 3; slot 1 in call 1 of 2; slot 2 in call 1 of 2
    assert acceptance_by_position(records) == [2 / 3, 1 / 2, 1 / 2]


def test_summary_reports_speedup_tokens_per_second_and_tau_per_task_group():
    def record(method, qid, category, seconds, calls):
        return {"method": method, "question_id": qid, "category": category, "new_tokens": 8, "wall_time": seconds,
                "accepted_lengths": [0] * calls, "draft_seconds": 0.0, "verify_seconds": seconds}

    records = [record("ar", "a", "code", 4.0, 8), record("ar", "b", "math", 4.0, 8),
               record("fast", "a", "code", 1.0, 2), record("fast", "b", "math", 2.0, 4)]
    table = markdown_table(summarize(records, "ar"), {}, ["ar", "fast"], "ar")
    groups = table.split("by task group:")
    assert len(groups) == 4  # speed-up, tokens/s and tau tables
    assert "| fast | 4.00x | 2.00x |" in groups[1]
    assert "| fast | 8.00 | 4.00 |" in groups[2]
    assert "| fast | 4.00 | 2.00 |" in groups[3]


def test_summary_reports_verify_cost_per_call_and_share_of_other_candidates():
    common = {"category": "code", "new_tokens": 6, "wall_time": 3.0, "draft_seconds": 1.0, "drafted": [2, 2, 2, 2]}
    records = [
        {**common, "method": "k4", "question_id": "a", "accepted_lengths": [2, 1], "verify_seconds": 1.0,
         "candidates": [0, 3]},
        {**common, "method": "k4", "question_id": "b", "accepted_lengths": [1, 2], "verify_seconds": 2.0,
         "candidates": [2, 1]},
        {**common, "method": "hf", "question_id": "a", "accepted_lengths": None, "verify_seconds": None},
    ]
    summary = summarize(records, "hf")
    assert summary["k4"]["all"]["verify_seconds_per_call"] == 3.0 / 4
    assert summary["k4"]["all"]["other_candidate_share"] == 3 / 4
    assert summary["hf"]["all"]["verify_seconds_per_call"] is None
    table = markdown_table(summary, {}, ["hf", "k4"], "hf")
    assert table.splitlines()[3].endswith("| 0.75 | 75% |")
    assert table.splitlines()[2].endswith("| n/a | n/a |")


def test_bench_runs_all_methods_and_checks_equality(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "category": cat, "prompt": text}) + "\n"
                               for i, (cat, text) in enumerate([("code", "def add(a, b):"), ("math", "what is 2 plus 2"),
                                                                ("code", "x = 1\ny = x")])))
    drafter = tmp_path / "drafter"
    save_drafter(drafter, {"mask_embedding": torch.zeros(32)}, {"base": str(tiny_model_dir), "num_layers": 2})
    out = tmp_path / "bench"
    args = ["bench", "--dataset", "jsonl", "--data-path", str(prompts), "--verifier", str(tiny_model_dir),
            "--assistant", str(tiny_model_dir), "--specdiff-v1-drafter", str(drafter), "--specdiff2-drafter", str(drafter),
            "--num-drafts", "3", "--gamma", "4", "--max-new-tokens", "12", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    report = capsys.readouterr().out
    assert "equals ar's token for token" in report
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 8
    assert {r["method"] for r in records} == {"ar", "ar-engine", "hf-assisted", "prompt-lookup", "sd-ar", "specdiff",
                                              "specdiff-v1", "specdiff2"}
    tree = [r for r in records if r["method"] == "specdiff"]
    assert all(len(r["plans"]) == len(r["accepted_lengths"]) == len(r["sources"]) == len(r["nodes"]) for r in tree)
    assert (out / "speedup.png").is_file() and (out / "acceptance.png").is_file()
    # a rerun skips finished records
    assert main(args) == 0
    assert len((out / "records.jsonl").read_text().splitlines()) == 24


def test_bench_reports_a_mismatch_and_fails(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "def add(a, b):"}) + "\n")
    out = tmp_path / "bench"
    out.mkdir()
    args = ["bench", "--dataset", "jsonl", "--data-path", str(prompts), "--verifier", str(tiny_model_dir),
            "--methods", "ar,ar-engine", "--max-new-tokens", "8", "--out", str(out)]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    for record in records:  # corrupt one method's stored output
        if record["method"] == "ar-engine":
            record["token_ids"][3] = (record["token_ids"][3] + 1) % 32
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(args) == 1
    assert "MISMATCH: ar-engine on p0: first divergence at new token 3" in capsys.readouterr().out


def test_bench_all_turns_uses_the_verifiers_answers_as_history(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "mt", "turns": ["def add(a, b):", "now x = 1"]}) + "\n")
    out = tmp_path / "bench"
    args = ["bench", "--dataset", "jsonl", "--data-path", str(prompts), "--verifier", str(tiny_model_dir),
            "--methods", "ar,ar-engine", "--max-new-tokens", "6", "--all-turns", "--out", str(out)]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["question_id"]) for r in records) == [
        ("ar", "mt/turn1"), ("ar", "mt/turn2"), ("ar-engine", "mt/turn1"), ("ar-engine", "mt/turn2")]


def test_bench_without_reference_says_equality_was_not_checked(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "def add(a, b):"}) + "\n")
    args = ["bench", "--dataset", "jsonl", "--data-path", str(prompts), "--verifier", str(tiny_model_dir),
            "--assistant", str(tiny_model_dir), "--methods", "sd-ar", "--max-new-tokens", "6",
            "--out", str(tmp_path / "bench")]
    assert main(args) == 0
    assert "NOT checked for equality" in capsys.readouterr().out


def test_bench_samples_at_a_temperature_and_skips_the_equality_check(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "def add(a, b):"}) + "\n")
    drafter = tmp_path / "drafter"
    save_drafter(drafter, {"mask_embedding": torch.zeros(32)}, {"base": str(tiny_model_dir), "num_layers": 2})
    common = ["bench", "--dataset", "jsonl", "--data-path", str(prompts), "--verifier", str(tiny_model_dir),
              "--assistant", str(tiny_model_dir), "--specdiff2-drafter", str(drafter), "--gamma", "4",
              "--max-new-tokens", "24"]
    methods = "ar,ar-engine,hf-assisted,sd-ar,specdiff2-k1,specdiff2-k2-g3"
    assert main(common + ["--methods", methods, "--out", str(tmp_path / "greedy")]) == 0
    assert main(common + ["--methods", methods, "--temperature", "1.0", "--out", str(tmp_path / "sampled")]) == 0
    assert "NOT compared token for token" in capsys.readouterr().out

    def outputs(folder):
        return {r["method"]: r["token_ids"] for r in map(json.loads, (tmp_path / folder / "records.jsonl").open())}

    greedy, sampled = outputs("greedy"), outputs("sampled")
    assert set(sampled) == set(methods.split(","))
    # the tiny model's distributions are nearly flat: a sampled answer equal to the greedy one would
    # mean the temperature never reached that method
    assert all(sampled[m] != greedy[m] for m in sampled)
    drafted = {r["method"]: r["drafted"] for r in map(json.loads, (tmp_path / "greedy" / "records.jsonl").open())}
    assert max(drafted["specdiff2-k2-g3"]) == 3 and max(drafted["specdiff2-k1"]) == 4  # -g3 overrides --gamma 4


def _one_prompt_args(tiny_model_dir, tmp_path, *extra):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"def f{i}(a):"}) + "\n" for i in range(2)))
    return ["bench", "--dataset", "jsonl", "--data-path", str(prompts), "--verifier", str(tiny_model_dir),
            "--methods", "ar,ar-engine", "--out", str(tmp_path / "bench"), *extra]


def test_bench_rerun_with_other_settings_is_refused_and_changes_nothing(tiny_model_dir, tmp_path, capsys):
    args = _one_prompt_args(tiny_model_dir, tmp_path, "--max-new-tokens", "4")
    assert main(args) == 0
    config_before = (tmp_path / "bench" / "config.json").read_text()
    assert main(args[:-2] + ["--max-new-tokens", "6", "--gamma-ar", "2"]) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens (4 there, 6 now)" in err and "settings.gamma_ar (5 there, 2 now)" in err
    assert (tmp_path / "bench" / "config.json").read_text() == config_before
    # a smaller selection of the same run reuses its records and reports only those
    assert main(args + ["--limit", "1"]) == 0
    assert "| ar | 1 |" in capsys.readouterr().out


def test_bench_validates_before_writing(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    for bad in (["--methods", "ar,nonsense"], ["--limit", "0"], ["--limit", "-1"]):
        assert main(_one_prompt_args(tiny_model_dir, tmp_path, *bad)) == 2
        assert not out.exists()
    missing = ["bench", "--dataset", "jsonl", "--data-path", str(tmp_path / "none.jsonl"), "--out", str(out)]
    assert main(missing) == 2 and not out.exists()
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 4 and all(line.startswith("specdiff: error:") for line in errors)
    assert "unknown method 'nonsense'" in errors[0] and "limit" in errors[1] and "none.jsonl" in errors[3]


def test_bench_resumes_after_a_torn_last_record(tiny_model_dir, tmp_path, capsys):
    args = _one_prompt_args(tiny_model_dir, tmp_path, "--max-new-tokens", "4")
    assert main(args) == 0
    path = tmp_path / "bench" / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:30])  # killed while writing the last record
    assert main(args) == 0
    assert "dropping the last line" in capsys.readouterr().err
    assert len(path.read_text().splitlines()) == 4
    path.write_text(lines[0] + "\n{broken\n" + "\n".join(lines[1:]) + "\n")  # corrupt in the middle
    assert main(args) == 2
    assert f"{path}:2: corrupt record" in capsys.readouterr().err


@pytest.mark.parametrize("rows, message", [
    ([{"id": "a"}], "prompts.jsonl:1: the row has no 'prompt' field"),
    ([{"prompt": "x"}, ["not", "an", "object"]], "prompts.jsonl:2: each line must be a JSON object"),
    ([{"prompt": "x"}, "{bad json"], "prompts.jsonl:2: not valid JSON"),
])
def test_bad_prompt_rows_are_named_by_file_and_line(tmp_path, rows, message):
    from specdiff.bench.datasets import load_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    with pytest.raises(ValueError, match=message):
        load_prompts("jsonl", str(path))


def test_spec_bench_row_without_category_is_named(tmp_path):
    from specdiff.bench.datasets import load_prompts

    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps({"question_id": 1, "turns": ["hi"]}) + "\n")
    with pytest.raises(ValueError, match="question.jsonl:1: the row has no 'category' field"):
        load_prompts("spec-bench", str(path))


def test_draft_cost_table_for_every_layer_count_and_gamma(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cost"
    args = ["bench-draft-cost", "--verifier", str(tiny_model_dir), "--layers", "1,2", "--gammas", "2,5",
            "--repeats", "2", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "draft_cost.json").read_text())
    assert sorted((r["layers"], r["gamma"]) for r in result["rows"]) == [(0, 2), (0, 5), (1, 2), (1, 5), (2, 2), (2, 5)]
    assert all(r["draft_s"] > 0 and r["fraction_of_verify"] > 0 for r in result["rows"])
    table = capsys.readouterr().out
    assert "| 2 | " in table and "| LM head only | " in table


def test_bench_drafts_with_a_dream_architecture_drafter(tiny_model_dir, tmp_path, capsys):
    """specdiff2 with a Dream-architecture folder (the fixture built with Dream's own code),
    sampled drafts from each slot's top 4, checked against the verifier's tokenizer."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "category": "code", "prompt": "def add(a, b):"}) + "\n")
    dream = Path(__file__).parent / "fixtures" / "dream" / "dream-tiny-gqa"
    out = tmp_path / "bench"
    args = ["bench", "--dataset", "jsonl", "--data-path", str(prompts), "--verifier", str(tiny_model_dir),
            "--methods", "ar,specdiff2", "--specdiff2-drafter", str(dream), "--num-drafts", "2",
            "--draft-top-k", "4", "--gamma", "3", "--max-new-tokens", "12", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    assert "equals ar's token for token" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"ar", "specdiff2"}


def test_llama_server_answers_end_with_exactly_one_end_of_generation_token():
    from specdiff.bench.llama_server_methods import answer_tokens

    eos = frozenset({151643, 151645})
    assert answer_tokens({"tokens": [5, 6], "stop_type": "eos"}, 151645, eos) == [5, 6, 151645]  # left out
    assert answer_tokens({"tokens": [5, 151645], "stop_type": "eos"}, 151645, eos) == [5, 151645]  # kept
    assert answer_tokens({"tokens": [5, 151643], "stop_type": "eos"}, 151645, eos) == [5, 151643]
    assert answer_tokens({"tokens": [5, 6], "stop_type": "limit"}, 151645, eos) == [5, 6]
