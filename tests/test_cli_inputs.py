"""Inputs people get wrong (issue 14): the target model's tokenizer by default, missing paths, missing files."""
import json

import pytest

from tenfold.cli import main
from tenfold.config import load_settings
from tenfold.errors import UserError
from tenfold.io import write_jsonl
from tenfold.models import resolve_model_path
from tenfold.synth.run import SynthSettings
from tenfold.toy import toy_records


def one_line_error(capsys, argv: list[str], verb: str) -> str:
    """Run the command; it must end with exit 2 and one `tenfold VERB: error:` line, no traceback."""
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tenfold {verb}: error: "), err
    return last


@pytest.fixture
def plain_file(tmp_path):
    return write_jsonl([r for r in toy_records(8, seed=2) if "text" in r], tmp_path / "redpajama.jsonl")


def test_synth_and_mix_refuse_without_a_tokenizer_naming_the_flag(tmp_path, capsys, plain_file):
    (tmp_path / "books").mkdir()
    synth = ["synth", "--corpus", str(tmp_path / "books"), "--output", str(tmp_path / "s.jsonl")]
    assert "--tokenizer" in one_line_error(capsys, synth, "synth")
    assert not (tmp_path / "s.jsonl").exists()
    mix = ["mix", "--output", str(tmp_path / "m.jsonl"), "--plain", str(plain_file)]
    assert "--tokenizer" in one_line_error(capsys, mix, "mix")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("synth:\n  min_tokens: 10\n")  # a recipe without model.name names no target model
    assert "model.name" in one_line_error(capsys, synth + ["--recipe", str(recipe)], "synth")


def test_the_tokenizer_comes_from_the_flag_or_the_recipes_model(tmp_path, plain_file):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name: tenfold/toy-llama\nsynth:\n  min_tokens: 10\n")
    common = {"corpus": str(tmp_path), "output": str(tmp_path / "s.jsonl")}
    assert load_settings(SynthSettings, "synth", str(recipe), common).tokenizer == "tenfold/toy-llama"
    given = dict(common, tokenizer="tenfold/tiny-llama")
    assert load_settings(SynthSettings, "synth", str(recipe), given).tokenizer == "tenfold/tiny-llama"
    output = tmp_path / "m.jsonl"
    main(["mix", "--output", str(output), "--plain", str(plain_file), "--recipe", str(recipe), "--max-length", "32"])
    assert json.loads((tmp_path / "m.jsonl.summary.json").read_text())["tokenizer"] == "tenfold/toy-llama"


def test_the_shipped_toy_data_keeps_the_shipped_tokenizer(tmp_path):
    output = tmp_path / "s.jsonl"
    main(["synth", "--corpus", "tenfold/toy", "--output", str(output), "--min-tokens", "400", "--max-tokens", "3000",
          "--tasks", "single_detail", "--max-contexts", "1"])
    assert json.loads((tmp_path / "s.jsonl.summary.json").read_text())["tokenizer"] == "tenfold/tiny-llama"
    main(["mix", "--output", str(tmp_path / "m.jsonl"), "--synthetic", "tenfold/toy", "--plain", "tenfold/toy",
          "--counts", "synthetic=3,plain=2"])
    summary = json.loads((tmp_path / "m.jsonl.summary.json").read_text())
    assert summary["tokenizer"] == "tenfold/tiny-llama" and summary["sources"]["plain"]["records"] == 2
    synthetic = summary["sources"]["synthetic"]
    assert synthetic["by_source"] == {"toy": 3} and synthetic["skipped"] == 0


def test_a_path_that_does_not_exist_is_named_and_a_hub_id_stays_one(tmp_path, monkeypatch):
    for name in ("./nope", "../missing", "/x/y", "~/no-such-model-here", "models/llama/8b"):
        with pytest.raises(UserError, match=f"^{name}: no such file or folder; give an existing"):
            resolve_model_path(name)
    assert resolve_model_path("meta-llama/Meta-Llama-3-8B-Instruct") == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert resolve_model_path("gpt2") == "gpt2"
    (tmp_path / "org" / "model" / "v1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("org/model/v1") == "org/model/v1"  # exists here: a local path
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model_path("~/org") == str(tmp_path / "org")


def test_missing_paths_are_one_line_errors_in_every_verb(tmp_path, capsys):
    line = one_line_error(capsys, ["train", "--recipe", "recipes/tiny-cpu.yaml", "--model.name", "./nope",
                                   "--train.output_dir", str(tmp_path / "run")], "train")
    assert line.startswith("tenfold train: error: ./nope: no such file or folder")
    line = one_line_error(capsys, ["synth", "--corpus", str(tmp_path), "--output", str(tmp_path / "s.jsonl"),
                                   "--tokenizer", "/x/y"], "synth")
    assert line.startswith("tenfold synth: error: /x/y: no such file or folder")
    line = one_line_error(capsys, ["eval", "needle", "--model", "../missing", "--output-dir", str(tmp_path / "e")],
                          "eval")
    assert line.startswith("tenfold eval: error: ../missing: no such file or folder")


def test_mix_names_a_file_that_does_not_exist(tmp_path, capsys, plain_file):
    for missing in (str(tmp_path / "nope.jsonl"), "nope.jsonl", "data/redpajama.parquet"):
        argv = ["mix", "--output", str(tmp_path / "m.jsonl"), "--plain", str(plain_file), missing,
                "--tokenizer", "tenfold/tiny-llama"]
        assert one_line_error(capsys, argv, "mix") == f"tenfold mix: error: no such file: {missing}"
    argv = ["mix", "--output", str(tmp_path / "m.jsonl"), "--plain", str(tmp_path), "--tokenizer", "tenfold/tiny-llama"]
    assert one_line_error(capsys, argv, "mix").endswith("not a .jsonl/.json/.parquet file")  # a folder


def test_synth_request_timeout_is_a_flag(tmp_path):
    from tenfold.cli import build_parser, settings_from_args

    args = build_parser().parse_args(["synth", "--corpus", "tenfold/toy", "--output", str(tmp_path / "o.jsonl"),
                                      "--request-timeout", "7.5"])
    assert settings_from_args(SynthSettings, "synth", args).request_timeout == 7.5  # as `tenfold synth` does


def test_mix_takes_the_tokenizer_synth_recorded_beside_its_output(tmp_path, capsys, plain_file):
    synthetic = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for path in synthetic:
        main(["synth", "--corpus", "tenfold/toy", "--output", str(path), "--min-tokens", "400", "--max-tokens",
              "3000", "--tasks", "single_detail", "--max-contexts", "1", "--tokenizer", "tenfold/toy-llama"])
    mix = ["mix", "--output", str(tmp_path / "m.jsonl"), "--synthetic", *map(str, synthetic), "--plain",
           str(plain_file), "--max-length", "32"]
    main(mix)  # no --tokenizer, no --recipe: the synthetic files' own
    assert json.loads((tmp_path / "m.jsonl.summary.json").read_text())["tokenizer"] == "tenfold/toy-llama"
    assert "counting tokens with tenfold/toy-llama" in capsys.readouterr().err
    summary = tmp_path / "b.jsonl.summary.json"
    summary.write_text(json.dumps(json.loads(summary.read_text()) | {"tokenizer": "tenfold/tiny-llama"}))
    line = one_line_error(capsys, mix, "mix")
    assert "different tokenizers (tenfold/tiny-llama, tenfold/toy-llama" in line and "give --tokenizer" in line
