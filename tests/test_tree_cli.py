"""`specdiff generate` decodes through the tree by default; --sources, --datastore and their
refusals; the datastore reader."""

import json

import pytest

from specdiff.cli import main
from specdiff.tree.datastore import index_datastore
from specdiff.tree.suffix_index import SuffixIndex


def generate(tiny_model_dir, capsys, *flags):
    code = main(["generate", "--verifier", str(tiny_model_dir), "--drafter", str(tiny_model_dir), "--raw",
                 "--prompt", "x = 1\ny = x\nz = x", "--max-new-tokens", "24", "--json", *flags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out), captured.err


def test_generate_uses_the_tree_by_default_and_equals_plain(tiny_model_dir, capsys):
    plain, _ = generate(tiny_model_dir, capsys, "--drafter", "none")
    tree, err = generate(tiny_model_dir, capsys)
    assert tree["token_ids"] == plain["token_ids"]
    assert "verify cost (tokens: ms)" in err
    assert tree["plans"][0]["choice"] in ("plain", "lookup", "hybrid")
    assert len(tree["sources"]) == len(tree["plans"]) == tree["verifier_calls"]
    assert set(tree["verify_cost_seconds"]) >= {"1", "24"}  # JSON keys
    diffusion_only, _ = generate(tiny_model_dir, capsys, "--sources", "diffusion")
    assert diffusion_only["token_ids"] == plain["token_ids"] and diffusion_only["plans"] == [None] * len(
        diffusion_only["plans"])


def test_generate_searches_a_datastore(tiny_model_dir, capsys, tmp_path):
    store = tmp_path / "store.jsonl"
    store.write_text(json.dumps({"text": "x = 1\ny = x\nz = x\nw = z"}) + "\n" + json.dumps("abc") + "\n")
    plain, _ = generate(tiny_model_dir, capsys, "--drafter", "none")
    result, err = generate(tiny_model_dir, capsys, "--sources", "suffix", "--datastore", str(store))
    assert result["token_ids"] == plain["token_ids"]
    assert "datastore: 2 documents" in err and "MiB" in err


@pytest.mark.parametrize("flags, message", [
    (["--sources", "lookup,nope"], "--sources takes a comma-separated list"),
    (["--datastore", "{missing}"], "no such file or folder"),
    (["--datastore", "{empty_folder}"], "the folder holds no files"),
    (["--sources", "lookup", "--datastore", "{empty_file}"], "add 'suffix' to --sources"),
    (["--datastore", "{empty_file}"], "no text in it"),
    (["--datastore", "{bad_jsonl}"], "line 2: not JSON"),
    (["--tree-max-nodes", "0"], "--tree-max-nodes must be >= 1"),
])
def test_tree_flags_are_refused_in_one_line(tiny_model_dir, capsys, tmp_path, flags, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.jsonl").write_text('"fine"\n{not json\n')
    paths = dict(missing=tmp_path / "nope", empty_folder=tmp_path / "empty", empty_file=tmp_path / "empty.txt",
                 bad_jsonl=tmp_path / "bad.jsonl")
    flags = [flag.format(**paths) for flag in flags]
    code = main(["generate", "--verifier", str(tiny_model_dir), "--drafter", str(tiny_model_dir), "--prompt", "hi",
                 *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("specdiff: error:")


def test_datastore_reads_folders_of_text_and_jsonl(tiny_tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text("abc abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps({"prompt": "q: ", "completion": "abd"}) + "\n\n")
    index = SuffixIndex(4)
    index_datastore(tmp_path, tiny_tokenizer(), index)
    assert index.documents == 2 and index.num_tokens == len("abc abc") + len("q: abd")
    ngram, starts = index.matches(tiny_tokenizer().encode("ab"), 1, 4)
    assert ngram == 2 and len(starts) == 3  # "abc" twice, "abd" once
