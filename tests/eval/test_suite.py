import json

import pytest
import yaml

from tenfold.cli import main
from tenfold.eval.suite import load_suite, markdown_table, run_suite


def suite_file(tmp_path, tiny_model_dir):
    suite = {"eval": {
        "models": {"base": {"model": str(tiny_model_dir)},
                   "rope-x400": {"model": str(tiny_model_dir), "rope_theta": 200000.0}},
        "backend_options": {"max_length": 1024},
        "benchmarks": {"needle": {"lengths": [300], "depths": [0, 100]},
                       "passkey": {"lengths": [250], "depths": [50]}}}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_eval_all_compares_models_side_by_side_and_resumes(tiny_model_dir, tmp_path):
    path = suite_file(tmp_path, tiny_model_dir)
    main(["eval", "all", "--suite", str(path), "--output-dir", str(tmp_path / "out")])
    table = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert table["models"] == ["base", "rope-x400"] and table["benchmarks"] == ["needle", "passkey"]
    for model in ("base", "rope-x400"):
        cells = json.loads((tmp_path / "out" / model / "needle.json").read_text())
        assert len(cells) == 2
        needle = json.loads((tmp_path / "out" / model / "needle.summary.json").read_text())
        assert table["rows"]["needle (paper)"][model] == needle["score"]
        assert table["rows"]["needle length 300"][model] == needle["by_length"]["300"]
    assert table["summaries"]["needle"]["rope-x400"]["model"]["rope"]["rope_theta"] == 200000.0
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert markdown.splitlines()[0] == "| | base | rope-x400 |" and "| needle (paper) |" in markdown
    assert "| passkey (exact-match) |" in markdown
    assert table["rows"]["native length"] == {"base": 256, "rope-x400": 256}  # the tiny model's own
    assert table["rows"]["training length"] == {"base": None, "rope-x400": None}  # neither was trained
    assert "| native length | 256 | 256 |" in markdown and "| training length |  |  |" in markdown
    before = (tmp_path / "out" / "base" / "needle.predictions.jsonl").read_text()
    run_suite(path, tmp_path / "out")  # everything finished: nothing is generated again
    assert (tmp_path / "out" / "base" / "needle.predictions.jsonl").read_text() == before


def test_bad_suites_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="models"):
        load_suite({"eval": {"benchmarks": {"needle": {}}}})
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_suite({"eval": {"models": {"a": {"model": "x"}}, "benchmarks": {"nedle": {}}}})
    with pytest.raises(ValueError, match="model:"):
        load_suite({"eval": {"models": {"a": {"path": "x"}}, "benchmarks": {"needle": {}}}})
    with pytest.raises(ValueError, match="suite file .*missing.yaml not found"):
        load_suite(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown needle key 'lenghts'; allowed: preset, lengths, depths"):
        load_suite({"eval": {"models": {"a": {"model": "x"}}, "benchmarks": {"needle": {"lenghts": [300]}}}})
    suite = load_suite({"eval": {"models": {"a": {"model": "x"}}, "benchmarks": {"passkey": {"lengths": "250,300"},
                                                                                   "topic": None}}})
    assert suite["benchmarks"] == {"passkey": {"lengths": [250, 300]}, "topic": {}}  # the registry's types


def test_markdown_table_leaves_missing_cells_blank():
    text = markdown_table(["a", "b"], {"x": {"a": 0.5}, "y": {"a": float("nan"), "b": 1.0}})
    assert text.splitlines() == ["| | a | b |", "|---|---|---|", "| x | 0.5000 |  |", "| y |  | 1.0000 |"]


def test_eval_all_refuses_predictions_made_otherwise_and_overwrite_discards_them(tiny_model_dir, tmp_path, capsys):
    def write_suite(**model):
        path = tmp_path / "suite.yaml"
        path.write_text(yaml.safe_dump({"eval": {"models": {"base": {"model": str(tiny_model_dir), **model}},
                                                 "backend_options": {"max_length": 1024},
                                                 "benchmarks": {"passkey": {"lengths": [250], "depths": [50]}}}}))
        return ["eval", "all", "--suite", str(path), "--output-dir", str(tmp_path / "out")]

    main(write_suite())
    argv = write_suite(rope_theta=200000.0)  # the same folder, another RoPE base: the old predictions are stale
    with pytest.raises(SystemExit) as exit:
        main(argv)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit.value.code == 2 and "passkey predictions made otherwise" in line and "--overwrite" in line
    main(argv + ["--overwrite"])
    key = json.loads((tmp_path / "out" / "base" / "passkey.key.json").read_text())
    assert key["backend"]["rope"]["rope_theta"] == 200000.0


def test_the_table_has_rulers_effective_length():
    from tenfold.eval.suite import summary_rows

    rows = summary_rows("ruler", {"scorer": "RULER string_match", "score": 90.0, "by_length": {"4096": 95.0},
                                  "threshold": 85.6, "effective_length": 4096})
    assert rows["ruler effective length (> 85.6)"] == 4096 and rows["ruler length 4096"] == 95.0
