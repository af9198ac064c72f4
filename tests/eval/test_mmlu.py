import csv
import json

import pytest
import torch

from fakes import FakeBackend
from tenfold.errors import UserError
from tenfold.eval.mmlu import LETTERS, format_prompt, load_questions, run_mmlu

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
