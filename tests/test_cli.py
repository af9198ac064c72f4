"""User errors across verbs (issue 14): one line naming the file, line or key and the fix, exit 2, no traceback;
--debug (anywhere on the line) or TENFOLD_DEBUG=1 shows the traceback instead. Bad training data files too."""

import pytest

from tenfold.cli import main
from tenfold.io import write_jsonl
from tenfold.recipe import RecipeError
from tenfold.toy import toy_records


def files(tmp_path):
    (tmp_path / "bad-key.yaml").write_text("train:\n  max_steps: 2\n  bogus: 1\n")
    (tmp_path / "bad-synth.yaml").write_text("model:\n  name: tenfold/tiny-llama\nsynth:\n  bogus: 1\n")
    (tmp_path / "bad-yaml.yaml").write_text("train:\n  max_steps: [2\n")
    return tmp_path


CASES = {  # name: (argv, what the one line must say); {t} is the test's folder
    "recipe key": (["train", "--recipe", "{t}/bad-key.yaml"],
                   "tenfold train: error: {t}/bad-key.yaml: unknown recipe key 'train.bogus'; allowed: "),
    "recipe value": (["train", "--train.max_steps", "abc"], "tenfold train: error: train.max_steps: expected int"),
    "synth key": (["synth", "--corpus", "tenfold/toy", "--output", "{t}/s.jsonl", "--recipe", "{t}/bad-synth.yaml"],
                  "tenfold synth: error: {t}/bad-synth.yaml: unknown synth key 'bogus'; allowed: "),
    "synth value": (["synth", "--corpus", "tenfold/toy", "--output", "{t}/s.jsonl", "--concurrency", "0"],
                    "tenfold synth: error: synth.concurrency is 0; give 1 or more requests in flight"),
    "bad YAML": (["plan", "--recipe", "{t}/bad-yaml.yaml"], "tenfold plan: error: {t}/bad-yaml.yaml: not valid YAML: "),
    "missing file": (["mix", "--output", "{t}/m.jsonl", "--synthetic", "{t}/nope.jsonl", "--tokenizer",
                      "tenfold/tiny-llama"], "tenfold mix: error: no such file: {t}/nope.jsonl"),
    "missing suite": (["eval", "all", "--suite", "{t}/nope.yaml", "--output-dir", "{t}/e"],
                      "tenfold eval: error: suite file {t}/nope.yaml not found; give an existing YAML file"),
    "flag combination": (["synth", "--corpus", "tenfold/toy", "--output", "{t}/s.jsonl", "--generator",
                          "transformers"], "tenfold synth: error: --generator transformers needs --model"),
    "missing flag": (["merge", "{t}/run"], "tenfold merge: error: the following arguments are required: "
                                           "--output-dir; see tenfold merge --help"),
    "flag value": (["demo", "--rope-factor", "ten"], "tenfold demo: error: argument --rope-factor: invalid float "
                                                    "value: 'ten'; see tenfold demo --help"),
    "list value": (["eval", "passkey", "--model", "{t}/no-model", "--output-dir", "{t}/e", "--lengths", "1,abc"],
                   "tenfold eval: error: command line: passkey.lengths: expected int, got 'abc'"),  # before loading
    "mix counts": (["mix", "--output", "{t}/m.jsonl", "--counts", "books=1"],
                   "tenfold mix: error: command line: --counts: unknown source 'books'; "
                   "use synthetic, instruct, plain"),
}


def error_line(capsys, argv):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("synth:")]  # progress
    assert exit.value.code == 2 and len(lines) == 1, err  # no usage, no traceback, nothing else
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_a_user_error_is_one_line_naming_where_and_the_fix_with_exit_2(case, tmp_path, capsys):
    t = files(tmp_path)
    argv, expected = CASES[case]
    line = error_line(capsys, [arg.format(t=t) for arg in argv])
    assert line.startswith(expected.format(t=t)), line


@pytest.mark.parametrize("how", ["--debug first", "--debug last", "TENFOLD_DEBUG=1"])
def test_debug_shows_the_traceback(how, tmp_path, monkeypatch):
    argv = ["train", "--recipe", str(files(tmp_path) / "bad-key.yaml")]
    if how == "TENFOLD_DEBUG=1":
        monkeypatch.setenv("TENFOLD_DEBUG", "1")
    else:
        argv = ["--debug", *argv] if how == "--debug first" else [*argv, "--debug"]
    with pytest.raises(RecipeError, match="unknown recipe key 'train.bogus'"):
        main(argv)


def bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.jsonl"
    good = write_jsonl(toy_records(3, seed=1), tmp_path / "good.jsonl").read_bytes()
    path.write_bytes({"latin-1": good + '{"text": "café"}\n'.encode("latin-1"),
                      "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
                      "empty": b"\n  \n"}[kind])
    return path


BAD_FILES = {"latin-1": ", line 4, column 14: byte 0xe9 is not UTF-8; save the file as UTF-8",
             "binary": ", line 3: a NUL byte, so a binary file, not JSON Lines; give a .jsonl file",
             "empty": ": empty (no records); give a JSONL file with one JSON object per line"}


@pytest.mark.parametrize("kind", BAD_FILES)
@pytest.mark.parametrize("verb", ["mix", "train"])
def test_a_bad_training_file_is_named_with_its_line_and_the_fix(verb, kind, tmp_path, capsys):
    path = bad_file(tmp_path, kind)
    argv = {"mix": ["mix", "--output", str(tmp_path / "m.jsonl"), "--plain", str(path), "--tokenizer",
                    "tenfold/tiny-llama"],
            "train": ["train", "--recipe", "recipes/tiny-cpu.yaml", "--data", str(path), "--output-dir",
                      str(tmp_path / "run")]}[verb]
    assert error_line(capsys, argv) == f"tenfold {verb}: error: {path}{BAD_FILES[kind]}" + {
        "latin-1": " (e.g. iconv -f latin1 -t utf-8)", "binary": " of one JSON object per line",
        "empty": ", or leave it out"}[kind]


def test_skip_messages_go_above_the_progress_bar_and_a_record_too_long_says_its_length(tmp_path, monkeypatch):
    from tenfold.models import load_tokenizer
    from tenfold.recipe import load_recipe
    from tenfold.train import batches

    long_answer = {"id": "long-answer", "conversations": [{"role": "user", "content": "doc\n\nWhat?"},
                                                          {"role": "assistant", "content": "word " * 200}]}
    no_turns = {"id": "no-turns", "conversations": []}
    data = write_jsonl([*toy_records(4, seed=1, min_lines=1, max_lines=2), long_answer, no_turns],
                       tmp_path / "train.jsonl")
    written = []
    monkeypatch.setattr(batches.tqdm, "write", lambda message, **_: written.append(message))
    recipe = load_recipe(None, {"data.train_files": [str(data)], "data.max_length": 96})
    rows, counts = batches.encode_files(recipe, load_tokenizer("tenfold/tiny-llama"), tmp_path / "run")
    assert counts["skipped"] == {"malformed record": 1, "longer than 96 tokens after truncation": 1}
    assert len(written) == 2 and written[0].startswith(f"{data}: record 'long-answer' skipped: ")
    tokens = int(written[0].split("skipped: ")[1].split()[0])
    assert tokens > 200 and "data.max_length 96" in written[0] and "raise data.max_length" in written[0]
    assert written[1].startswith(f"{data}: record 'no-turns': 'conversations' is empty")


MIX_TOY = ["mix", "--synthetic", "tenfold/toy", "--plain", "tenfold/toy", "--counts", "synthetic=3,plain=2"]
LIBRARY_ERRORS = {"ValueError": ValueError("tokenizer.json: a bug inside the library"),
                  "FileNotFoundError": FileNotFoundError(2, "No such file or directory", "vocab.json"),
                  "PermissionError": PermissionError(13, "Permission denied", "/somewhere/config.json")}


@pytest.mark.parametrize("kind", LIBRARY_ERRORS)
def test_an_error_from_library_code_keeps_its_traceback(kind, tmp_path, monkeypatch, capsys):
    """transformers and torch raise ValueError and OSError for their own bugs too: only a UserError is one line."""
    from tenfold import mix

    def library_code(*_args, **_kwargs):
        raise LIBRARY_ERRORS[kind]

    monkeypatch.setattr(mix, "load_tokenizer", library_code)
    with pytest.raises(type(LIBRARY_ERRORS[kind])) as raised:  # main() re-raises it: Python prints the traceback
        main([*MIX_TOY, "--output", str(tmp_path / "m.jsonl")])
    assert raised.value is LIBRARY_ERRORS[kind] and "error:" not in capsys.readouterr().err


def test_a_user_error_from_the_same_place_is_one_line(tmp_path, monkeypatch, capsys):
    from tenfold import mix
    from tenfold.errors import UserError

    def refuse(*_args, **_kwargs):
        raise UserError("tenfold/toy: a mistake the user can fix\n  named on one line; give --tokenizer")

    monkeypatch.setattr(mix, "load_tokenizer", refuse)
    assert error_line(capsys, [*MIX_TOY, "--output", str(tmp_path / "m.jsonl")]) == (
        "tenfold mix: error: tenfold/toy: a mistake the user can fix named on one line; give --tokenizer")


def test_a_full_disk_writing_the_mix_is_one_line_and_keeps_the_old_output(tmp_path, monkeypatch, capsys):
    import errno
    import os

    from tenfold import mix

    output = tmp_path / "m.jsonl"
    output.write_text("the old mix\n")

    def full_disk(*_args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mix.os, "replace", full_disk)
    assert error_line(capsys, [*MIX_TOY, "--output", str(output)]) == (
        f"tenfold mix: error: could not write {output}: No space left on device; free space (or give another "
        f"--output) and run the same command again: what was written before is kept")
    assert output.read_text() == "the old mix\n"


@pytest.mark.parametrize("benchmark", ["infbench", "longbench", "mmlu"])
def test_a_benchmark_offline_without_its_data_names_the_flag(benchmark, monkeypatch):
    """The hub's and datasets' not-found errors are OSErrors, which keep their traceback: each is told in one line."""
    import datasets
    import huggingface_hub
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import LocalEntryNotFoundError

    from tenfold.errors import UserError
    from tenfold.eval import infbench, longbench, mmlu

    def offline(*_args, **_kwargs):
        raise LocalEntryNotFoundError("offline and not in the cache")

    def no_dataset(*_args, **_kwargs):
        raise DatasetNotFoundError("offline and not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(datasets, "load_dataset", no_dataset)
    load, flag = {"infbench": (lambda: infbench.load_data("longbook_qa_eng"), "--data-dir"),
                  "longbench": (lambda: longbench.load_data("hotpotqa"), "--data-dir"),
                  "mmlu": (lambda: mmlu.load_questions(), "--data")}[benchmark]
    with pytest.raises(UserError, match=f"from the Hugging Face hub .*Error\\); pass {flag} "):
        load()
