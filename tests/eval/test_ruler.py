import json

import pytest

from fakes import FakeBackend
from tenfold.cli import main
from tenfold.eval import ruler
from tenfold.eval.metrics import string_match_all
from tenfold.eval.ruler import NIAH_TASKS, fit_size, make_sample, run_ruler


def oracle(tokenizer, answers_by_prompt):
    """Answers every sample correctly by reading the answers off the case (via its prompt)."""
    return FakeBackend(lambda prompt: " " + ", ".join(answers_by_prompt.get(prompt, ["wrong"])), tokenizer=tokenizer,
                       name="oracle")


def test_string_match_all_on_known_strings():
    assert string_match_all("The numbers are 123 and 456.", ["123", "456"]) == 1.0
    assert string_match_all("only 123", ["123", "456"]) == 0.5
    assert string_match_all("ABC-def", ["abc-DEF"]) == 1.0


def test_samples_hold_their_answers_in_rulers_wording():
    single = make_sample("niah_single_1", 5, 3, [])
    assert single["prompt"].startswith("A special magic number is hidden within the following text.")
    assert f"is: {single['answers'][0]}." in single["prompt"] and single["answer_prefix"].endswith("is")
    multi = make_sample("niah_multivalue", 5, 3, [])
    assert len(multi["answers"]) == 4 and all(f"is: {v}." in multi["prompt"] for v in multi["answers"])
    assert multi["prompt"].startswith("Some special magic numbers are hidden")
    query = make_sample("niah_multiquery", 5, 3, [])
    assert len(query["answers"]) == 4 and ", and " in query["answer_prefix"]
    uuids = make_sample("niah_multikey_3", 5, 3, [])
    assert uuids["prompt"].count("One of the special magic uuids for") == 6 and len(uuids["answers"][0]) == 36
    vt = make_sample("vt", 5, 3, [])
    assert len(vt["answers"]) == 5 and all(f"VAR {name} =" in vt["prompt"] for name in vt["answers"])
    cwe = make_sample("cwe", 4, 3, [])
    assert len(cwe["answers"]) == 10 and all(cwe["prompt"].count(f". {w} ") + cwe["prompt"].count(f". {w}\n") == 30
                                             for w in cwe["answers"])
    assert make_sample("vt", 5, 3, []) == vt and make_sample("vt", 5, 4, []) != vt


def test_haystack_is_the_largest_that_fits_with_the_generation(tiny_backend):
    for task in ("niah_single_1", "vt"):
        size = fit_size(tiny_backend, task, 700, 128, [])
        fitted = make_sample(task, size, 0, [])
        larger = make_sample(task, size + 1, 0, [])
        assert tiny_backend.prompt_length(fitted["prompt"], answer_prefix=fitted["answer_prefix"]) + 128 <= 700
        assert tiny_backend.prompt_length(larger["prompt"], answer_prefix=larger["answer_prefix"]) + 128 > 700


def test_every_task_scores_one_for_right_answers_and_resumes(tiny_backend, tmp_path):
    tasks = [*NIAH_TASKS, "vt", "cwe"]
    answers = {}  # filled with the answers of the samples run_ruler builds
    original = ruler.make_sample

    def recording(task, size, seed, essay):
        sample = original(task, size, seed, essay)
        answers[sample["prompt"]] = sample["answers"]
        return sample

    ruler.make_sample = recording
    try:
        summary = run_ruler(oracle(tiny_backend.tokenizer, answers), tmp_path, tasks=tasks, lengths=[3000], samples=2)
    finally:
        ruler.make_sample = original
    assert summary["score"] == 1.0 and set(summary["by_task_and_length"]) == set(tasks)
    records = json.loads((tmp_path / "ruler.json").read_text())
    assert len(records) == 16 and {r["task"] for r in records} == set(tasks)
    wrong = oracle(tiny_backend.tokenizer, {})
    assert run_ruler(wrong, tmp_path, tasks=tasks, lengths=[3000], samples=2)["score"] == 1.0  # all resumed


def test_ruler_cli_runs_a_tiny_model_end_to_end(tiny_model_dir, tmp_path):
    main(["eval", "ruler", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path), "--tasks",
          "niah_single_1,vt", "--lengths", "700", "--samples", "2", "--max-length", "700"])
    records = json.loads((tmp_path / "ruler.json").read_text())
    assert [r["task"] for r in records] == ["niah_single_1"] * 2 + ["vt"] * 2
    assert all(r["score"] == string_match_all(r["prediction"], r["answers"]) for r in records)
    log = [json.loads(line) for line in (tmp_path / "ruler.predictions.jsonl").read_text().splitlines()]
    assert len(log) == 4
    with pytest.raises(SystemExit):
        main(["eval", "ruler", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "x"), "--tasks", "vt",
              "--lengths", "4096"])
    assert not (tmp_path / "x").exists()
