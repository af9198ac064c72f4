import csv
import json
from pathlib import Path

import pytest
import torch

from fakes import FakeBackend
from fixture_makers import load_maker
from tenfold.errors import UserError
from tenfold.eval.mmlu import (
    LETTERS,
    PRESETS,
    SUBJECT_CATEGORY,
    accuracies,
    format_prompt,
    letter_token_ids,
    load_questions,
    run_mmlu,
)
from tenfold.io import write_jsonl

ROOT = Path(__file__).resolve().parents[2]

# subject -> number of questions: unequal sizes make the subject mean and the question mean differ
SUBJECTS = {"abstract_algebra": 2, "philosophy": 3, "sociology": 5}


def _write_csv_folder(root):
    test = root / "test"
    test.mkdir(parents=True)
    for subject, n in SUBJECTS.items():
        with open(test / f"{subject}_test.csv", "w", newline="") as f:
            writer = csv.writer(f)
            for i in range(n):
                writer.writerow([f" what is {i} + {i}, asked about {subject} ? ", str(2 * i), str(i), "red fox, blue",
                                 "none", LETTERS[i % 4]])
    return root


class ScriptedBackend(FakeBackend):
    """Puts the highest score on a chosen letter: question i of a subject is answered right iff i < right[subject]."""

    def __init__(self, tokenizer, right):
        super().__init__(tokenizer=tokenizer, batch_size=4, name="scripted")
        self.right, self.seen = right, []

    def next_token_logprobs(self, prompts, chat=True):
        out = torch.full((len(prompts), len(self.tokenizer)), -50.0)
        for row, prompt in enumerate(prompts):
            self.seen.append(prompt)
            subject = next(s for s in SUBJECTS if s.replace("_", " ") in prompt.split("\n")[0])
            i = int(prompt.split("what is ")[1].split(" ")[0])
            answer = i % 4 if i < self.right[subject] else (i + 1) % 4
            text = (" " if not chat else "") + LETTERS[answer]
            letter = self.tokenizer(text, add_special_tokens=False)["input_ids"][-1]
            out[row, letter] = 0.0
        return out


def test_presets_average_over_subjects_or_questions(tiny_backend, tmp_path):
    data = _write_csv_folder(tmp_path / "mmlu")
    right = {"abstract_algebra": 2, "philosophy": 0, "sociology": 1}  # accuracies 1, 0, 0.2
    paper = run_mmlu(ScriptedBackend(tiny_backend.tokenizer, right), tmp_path / "paper", preset="paper", data=data)
    assert paper["subjects"] == {"abstract_algebra": 1.0, "philosophy": 0.0, "sociology": 0.2}
    assert paper["score"] == pytest.approx(1.2 / 3)  # mean of the subjects
    assert paper["categories"] == {"STEM": 1.0, "Social Sciences": 0.2, "Humanities": 0.0}
    harness = run_mmlu(ScriptedBackend(tiny_backend.tokenizer, right), tmp_path / "harness", preset="lm-eval-harness",
                       data=data)
    assert harness["score"] == pytest.approx(3 / 10)  # 3 right out of 10 questions
    assert harness["preset"] == "lm-eval-harness" and paper["preset"] == "paper"


def test_each_preset_has_its_codes_category_map():
    records = [{"subject": "anatomy", "correct": 1}, {"subject": "virology", "correct": 0},
               {"subject": "astronomy", "correct": 0}]
    paper = accuracies(records, "subjects", PRESETS["paper"]["categories"])["categories"]
    harness = accuracies(records, "questions", PRESETS["lm-eval-harness"]["categories"])["categories"]
    assert paper == {"STEM": 0.0, "Other": 0.5}  # FlagEmbedding: anatomy is "others"
    assert harness == {"STEM": 0.5, "Other": 0.0}  # lm-eval: anatomy is in mmlu_stem


def test_letter_scores_follow_each_preset_protocol(tiny_backend, tmp_path):
    data = _write_csv_folder(tmp_path / "mmlu")
    tok, model = tiny_backend.tokenizer, tiny_backend.model
    for preset in ("paper", "lm-eval-harness"):
        run_mmlu(tiny_backend, tmp_path / preset, preset=preset, data=data, subjects=["philosophy"])
        record = json.loads((tmp_path / preset / "mmlu.json").read_text())[1]
        prompt = format_prompt(record)
        if preset == "paper":  # the user turn of the chat template, then "A" without a space
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"]
            letters = [tok(x, add_special_tokens=False)["input_ids"][-1] for x in LETTERS]
        else:  # raw text, then " A": the shared space token goes first, the letters compete after it
            ids = tok(prompt + " ")["input_ids"]
            letters = [tok(" " + x, add_special_tokens=False)["input_ids"][-1] for x in LETTERS]
        with torch.no_grad():
            logits = model(torch.tensor([list(ids)])).logits[0, -1]
        expected = torch.log_softmax(logits.float(), -1)[letters]
        assert torch.allclose(torch.tensor(record["letter_logprobs"]), expected, atol=1e-5)
        assert record["prediction"] == int(expected.argmax())


def test_resume_scores_only_unfinished_questions(tiny_backend, tmp_path):
    data = _write_csv_folder(tmp_path / "mmlu")
    right = {s: n for s, n in SUBJECTS.items()}
    first = run_mmlu(ScriptedBackend(tiny_backend.tokenizer, right), tmp_path / "out", data=data)
    path = tmp_path / "out" / "mmlu.predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:6]) + lines[6][:15])  # killed while writing the 7th
    again = ScriptedBackend(tiny_backend.tokenizer, right)
    second = run_mmlu(again, tmp_path / "out", data=data)
    assert len(again.seen) == 4 and second["score"] == first["score"] == 1.0


def test_jsonl_layouts_and_bad_input(tmp_path):
    path = tmp_path / "mmlu.jsonl"
    rows = [{"question": "q1", "subject": "virology", "choices": ["a", "b", "c", "d"], "answer": 2},
            {"query": "q2", "subject": "virology", "choices": ["a", "b", "c", "d"], "answer": "B"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions = load_questions(path)
    assert ([(q["id"], q["question"], q["answer"]) for q in questions]
            == [("virology/0", "q1", 2), ("virology/1", "q2", 1)])
    assert format_prompt(questions[0]) == ("The following are multiple choice questions (with answers) about "
                                           "virology.\n\nq1\nA. a\nB. b\nC. c\nD. d\nAnswer:")
    path.write_text(json.dumps({"question": "q", "subject": "x", "choices": ["a"], "answer": 0}) + "\n")
    with pytest.raises(ValueError, match="record 1"):
        load_questions(path)
    (tmp_path / "bad" / "test").mkdir(parents=True)
    (tmp_path / "bad" / "test" / "anatomy_test.csv").write_text("q,a,b,c,d,E\n")
    with pytest.raises(ValueError, match="anatomy_test.csv, line 1"):
        load_questions(tmp_path / "bad")
    with pytest.raises(UserError, match="missing.jsonl not found; give MMLU's data folder"):  # not open()'s error
        load_questions(tmp_path / "missing.jsonl")


def test_cli_mmlu(tiny_model_dir, tmp_path, capsys):
    from tenfold.cli import main

    data = _write_csv_folder(tmp_path / "mmlu")
    main(["eval", "mmlu", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out"), "--data", str(data),
          "--preset", "lm-eval-harness", "--limit", "2"])
    summary = json.loads((tmp_path / "out" / "mmlu.summary.json").read_text())
    assert summary["questions"] == 6 and summary["preset"] == "lm-eval-harness"
    assert "mmlu: score" in capsys.readouterr().out


# ---------------------------------------------------------------- the paper preset = FlagEmbedding's eval_mmlu.py

def _recording_render_prompt(monkeypatch) -> list[list[int]]:
    """The ids of every prompt the backend renders (the ids the model reads), from now on."""
    from tenfold import generation

    fed, render = [], generation.render_prompt
    monkeypatch.setattr(generation, "render_prompt", lambda *args, **kwargs: fed.append(render(*args, **kwargs))
                        or fed[-1])
    return fed


@pytest.fixture(scope="module")
def paper_fixture():
    return json.loads((ROOT / "tests" / "fixtures" / "mmlu_parity.json").read_text())


@pytest.mark.parametrize("chat_template", ["llama-3", "tokenizer"])  # tiny-llama's own: Llama-3-Instruct's
def test_paper_preset_scores_what_the_papers_eval_mmlu_py_did(paper_fixture, chat_template, tmp_path, monkeypatch):
    from tenfold import generation

    maker = load_maker("mmlu_parity_fixture")
    records = maker.build_records()
    assert maker.records_sha256(records) == paper_fixture["records_sha256"], \
        "the records changed: regenerate the fixture with scripts/mmlu_parity_fixture.py"
    cases = paper_fixture["cases"]
    model = maker.write_model(tmp_path / "model", [case["prompt_ids"] for case in cases])
    backend = generation.load_backend(str(model), chat_template=chat_template, dtype="float32", batch_size=8)
    fed = _recording_render_prompt(monkeypatch)
    summary = run_mmlu(backend, tmp_path / "out", preset="paper", data=write_jsonl(records, tmp_path / "test.json"))
    assert sorted(fed) == sorted(case["prompt_ids"] for case in cases)  # token for token, each question once
    assert [[i] for i in letter_token_ids(backend.tokenizer, PRESETS["paper"]["prefix"])[1]] == \
        cases[0]["letter_ids"] and all(case["letter_ids"] == cases[0]["letter_ids"] for case in cases)
    scored = json.loads((tmp_path / "out" / "mmlu.json").read_text())
    for record, case in zip(scored, cases, strict=True):
        assert record["prediction"] == case["prediction"], record["id"]
        assert record["letter_logprobs"] == pytest.approx([-nll for nll in case["nll"]], abs=1e-4), record["id"]
    assert summary["subjects"] == pytest.approx(paper_fixture["subjects"], abs=1e-6)
    categories = {"Other" if name == "others" else name: value for name, value in paper_fixture["computed"].items()}
    assert summary["score"] == pytest.approx(categories.pop("All"), abs=1e-6)
    assert summary["categories"] == pytest.approx(categories, abs=1e-6)


def test_paper_fixture_is_decided_by_clear_margins_and_the_reference_category_map(paper_fixture):
    import hashlib

    margins = [sorted(case["nll"])[1] - sorted(case["nll"])[0] for case in paper_fixture["cases"]]
    assert min(margins) > 100 * 1e-4  # far above the score tolerance: no case is a near tie
    assert {case["prediction"] for case in paper_fixture["cases"]} == set(range(4))
    assert len(set(paper_fixture["subjects"].values())) >= 5 and len(set(paper_fixture["computed"].values())) == 5
    reference_names = {name: "others" if category == "Other" else category
                       for name, category in SUBJECT_CATEGORY.items()}
    assert hashlib.sha256(json.dumps(reference_names, sort_keys=True).encode()).hexdigest() == \
        paper_fixture["subject_category_sha256"], "tenfold's subject -> category map differs from the paper code's"
    assert paper_fixture["printed"]["All"] == []  # the paper commit's print reads metrics["all"], never filled


# ---------------------------------------------------------------- the lm-eval-harness preset = lm-eval's mmlu tasks

def test_lm_eval_harness_preset_scores_what_lm_eval_did(tmp_path, monkeypatch):
    from tenfold.generation import load_backend
    from tenfold.models import load_tokenizer

    maker = load_maker("mmlu_harness_parity_fixture")
    fixture = json.loads((ROOT / "tests" / "fixtures" / "mmlu_harness_parity.json").read_text())
    records = maker.build_records()
    assert maker.paper.records_sha256(records) == fixture["records_sha256"], \
        "the records changed: regenerate the fixture with scripts/mmlu_harness_parity_fixture.py"
    tokenizer = maker.paper.bos_tokenizer(load_tokenizer(maker.paper.MODEL))
    model = maker.paper.write_model(tmp_path / "model", maker.levelling_prompts(tokenizer, records))
    backend = load_backend(str(model), dtype="float32", batch_size=8)
    fed = _recording_render_prompt(monkeypatch)
    summary = run_mmlu(backend, tmp_path / "out", preset="lm-eval-harness",
                       data=write_jsonl(records, tmp_path / "test.jsonl"))
    cases = {f"{case['subject']}/{case['doc_id']}": case for case in fixture["cases"]}
    # tenfold reads lm-eval's context and the continuations' shared first token (" "), then compares the letters
    assert sorted(fed) == sorted(case["context"] + case["continuations"][0][:-1] for case in cases.values())
    letters = letter_token_ids(backend.tokenizer, PRESETS["lm-eval-harness"]["prefix"])[1]
    assert all([c[-1] for c in case["continuations"]] == letters for case in cases.values())
    scored = json.loads((tmp_path / "out" / "mmlu.json").read_text())
    assert sorted(record["id"] for record in scored) == sorted(cases)
    for record in scored:
        likelihoods = cases[record["id"]]["loglikelihoods"]
        assert record["prediction"] == likelihoods.index(max(likelihoods)), record["id"]
        assert record["correct"] == cases[record["id"]]["acc"], record["id"]
        # lm-eval's scores add log p(" "), the same for the 4 letters: compare them relative to "A"
        assert [x - record["letter_logprobs"][0] for x in record["letter_logprobs"]] == \
            pytest.approx([x - likelihoods[0] for x in likelihoods], abs=1e-4), record["id"]
    results = {name.removeprefix("tenfold_mmlu").lstrip("_"): value["acc"]
               for name, value in fixture["results"].items()}
    assert summary["subjects"] == pytest.approx({s: results[s] for s in summary["subjects"]}, abs=1e-6)
    assert summary["score"] == pytest.approx(results[""], abs=1e-6)  # lm-eval's mmlu group, weighted by size
    assert summary["categories"] == pytest.approx({"STEM": results["stem"], "Other": results["other"],
                                                   "Social Sciences": results["social_sciences"],
                                                   "Humanities": results["humanities"]}, abs=1e-6)
    assert {case["loglikelihoods"].index(max(case["loglikelihoods"])) for case in cases.values()} == set(range(4))
