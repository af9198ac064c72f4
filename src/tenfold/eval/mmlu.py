"""`tenfold eval mmlu`: zero-shot MMLU by the next-token scores of the answer letters.

Prompt (both presets, as FlagEmbedding's eval_mmlu.py and lm-evaluation-harness write it):
"The following are multiple choice questions (with answers) about {subject}.\\n\\n{question}\\nA. ..\\n
B. ..\\nC. ..\\nD. ..\\nAnswer:". The prediction is the letter the model scores highest next.

- "paper" (FlagEmbedding eval_mmlu.py, Zhang et al., 2024, Table 3): the prompt is the user turn of the
  chat template and the letters "A".."D" (no leading space) open the assistant turn; per-subject
  accuracy; a category is the mean of its subjects' accuracies, and "All" the mean of the 57 subjects.
  The paper code scores each letter by the mean NLL of the assistant turn's labelled tokens after dropping
  the last eos id of the generation config: with Llama-3-Instruct's ids (<|end_of_text|>, <|eot_id|>) that
  is the letter alone, so its argmin NLL is this preset's argmax log-probability. Its "All" is computed
  as here but printed as an empty list at the paper's commit (it reads metrics["all"]; fixed later).
  tests/eval/test_mmlu.py matches this preset prompt for prompt (token ids, with `--chat-template
  llama-3` or Llama-3-Instruct's own template), prediction for prediction, letter scores within 1e-4 and
  accuracies within 1e-6 with the paper's own code (scripts/mmlu_parity_fixture.py).
- "lm-eval-harness": the raw prompt (no chat template) continued by " A".." D" (with the space);
  every average (categories and overall) is over questions. tests/eval/test_mmlu.py matches it with
  lm-eval 0.4.13's own mmlu tasks (scripts/mmlu_harness_parity_fixture.py): prompt ids, predictions,
  letter scores up to log p(" ") (which lm-eval adds to all four) and subject/group accuracies. lm-eval
  cuts a prompt longer than the model's window from the left; this preset scores it whole (MMLU's
  prompts are far shorter than 8K tokens).

Categories (STEM, Social Sciences, Humanities, Other): FlagEmbedding's map under "paper", lm-eval's
groups (mmlu_stem, ...) under "lm-eval-harness"; they differ in one subject, anatomy (Other; STEM).
The data is read from `data` (a folder in the original hendrycks CSV layout, test/<subject>_test.csv,
or a JSONL file with cais/mmlu's fields question/subject/choices/answer, or FlagEmbedding's
query/subject/choices/answer), else from the Hugging Face hub (cais/mmlu, config "all", split "test").
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tenfold.config import setting
from tenfold.errors import RecipeError, RecordError, UserError
from tenfold.eval.reference import paper_reported
from tenfold.eval.runner import claim_predictions, describe, resume_cases, write_outputs
from tenfold.io import read_jsonl

LETTERS = ("A", "B", "C", "D")
STEM = ["abstract_algebra", "astronomy", "college_biology", "college_chemistry", "college_computer_science",
        "college_mathematics", "college_physics", "computer_security", "conceptual_physics", "electrical_engineering",
        "elementary_mathematics", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
        "high_school_mathematics", "high_school_physics", "high_school_statistics", "machine_learning"]
SOCIAL_SCIENCES = ["econometrics", "high_school_geography", "high_school_government_and_politics",
                   "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
                   "human_sexuality", "professional_psychology", "public_relations", "security_studies", "sociology",
                   "us_foreign_policy"]
HUMANITIES = ["formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
              "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
              "philosophy", "prehistory", "professional_law", "world_religions"]
OTHER = ["anatomy", "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
         "management", "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
         "professional_medicine", "virology"]
CATEGORIES = {"STEM": STEM, "Social Sciences": SOCIAL_SCIENCES, "Humanities": HUMANITIES, "Other": OTHER}
SUBJECT_CATEGORY = {subject: category for category, subjects in CATEGORIES.items() for subject in subjects}
HARNESS_CATEGORIES = {**CATEGORIES, "STEM": sorted(STEM + ["anatomy"]),  # lm-eval's mmlu_stem has anatomy
                      "Other": [s for s in OTHER if s != "anatomy"]}
PRESETS = {"paper": {"chat": True, "prefix": "", "average": "subjects", "categories": CATEGORIES},
           "lm-eval-harness": {"chat": False, "prefix": " ", "average": "questions", "categories": HARNESS_CATEGORIES}}


def format_prompt(question: dict) -> str:
    subject = question["subject"].replace("_", " ")
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, question["choices"]))
    return (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            f"{question['question'].strip()}\n{options}\nAnswer:")


def load_questions(data: str | Path | None = None) -> list[dict]:
    """Questions as {"id", "subject", "question", "choices" (4), "answer" (0..3)}, in a fixed order."""
    if data is None:
        from datasets import load_dataset

        try:
            rows = load_dataset("cais/mmlu", "all", split="test")
        except OSError as e:  # offline and not cached (datasets' not-found errors are OSErrors), no connection
            raise UserError(f"could not load cais/mmlu from the Hugging Face hub ({type(e).__name__}); pass --data "
                            f"with MMLU's data folder or a JSONL file") from None
        questions = [{"subject": r["subject"], "question": r["question"], "choices": list(r["choices"]),
                      "answer": int(r["answer"])} for r in rows]
    else:
        path = Path(data)
        if not path.exists():  # named here: open()'s FileNotFoundError would be a traceback
            raise UserError(f"mmlu data {path} not found; give MMLU's data folder or a JSONL file")
        questions = _read_csv_folder(path) if path.is_dir() else _read_jsonl(path)
    counts = defaultdict(int)
    for q in questions:
        q["id"] = f"{q['subject']}/{counts[q['subject']]}"
        counts[q["subject"]] += 1
    return questions


def _read_csv_folder(folder: Path) -> list[dict]:
    test = next((d for d in (folder / "test", folder / "data" / "test", folder) if list(d.glob("*_test.csv"))), None)
    if test is None:
        raise UserError(f"{folder}: no <subject>_test.csv files (in it or in test/); give MMLU's data folder "
                        f"as published (hendrycks/test data.tar) or a JSONL file")
    questions = []
    for path in sorted(test.glob("*_test.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if len(row) != 6 or row[5] not in LETTERS:
                    raise RecordError(f"{path}, line {line}: expected question,A,B,C,D,answer-letter")
                questions.append({"subject": path.name[:-len("_test.csv")], "question": row[0], "choices": row[1:5],
                                  "answer": LETTERS.index(row[5])})
    return questions


def _read_jsonl(path: Path) -> list[dict]:
    questions = []
    for i, record in enumerate(read_jsonl(path), start=1):
        text = record.get("question", record.get("query"))
        answer = record.get("answer")
        answer = LETTERS.index(answer) if answer in LETTERS else answer
        if not isinstance(text, str) or "subject" not in record or len(record.get("choices", [])) != 4 \
                or answer not in range(4):
            raise RecordError(f"{path}, record {i}: needs question (or query), subject, 4 choices and "
                              f"answer 0-3 or A-D")
        questions.append({"subject": record["subject"], "question": text, "choices": list(record["choices"]),
                          "answer": answer})
    return questions


def letter_token_ids(tokenizer, prefix: str) -> tuple[str, list[int]]:
    """The text to append to each prompt and the 4 candidate next tokens.

    " A".." D" can be two tokens (a space, then the letter) in small vocabularies: the shared first token
    goes into the prompt, which changes no comparison (it has the same probability for all four).
    """
    encoded = [tokenizer(prefix + letter, add_special_tokens=False)["input_ids"] for letter in LETTERS]
    shared = 0
    while all(len(e) > shared + 1 for e in encoded) and len({tuple(e[:shared + 1]) for e in encoded}) == 1:
        shared += 1
    if any(len(e) != shared + 1 for e in encoded) or len({e[-1] for e in encoded}) != 4:
        raise UserError(f"mmlu: the tokenizer does not give {[prefix + x for x in LETTERS]} one distinct last "
                        f"token each ({encoded}); use the other preset")
    return tokenizer.decode(encoded[0][:shared]), [e[-1] for e in encoded]


def accuracies(records: list[dict], average: str, categories: dict[str, list[str]] = CATEGORIES) -> dict:
    by_subject = defaultdict(list)
    for r in records:
        by_subject[r["subject"]].append(r["correct"])
    subjects = {s: sum(v) / len(v) for s, v in sorted(by_subject.items())}

    def mean(values):
        return sum(values) / len(values) if values else None

    if average == "subjects":
        means = {c: mean([subjects[s] for s in names if s in subjects]) for c, names in categories.items()}
        overall = mean(list(subjects.values()))
    else:
        means = {c: mean([r["correct"] for r in records if r["subject"] in names]) for c, names in categories.items()}
        overall = mean([r["correct"] for r in records])
    return {"score": overall, "categories": {c: v for c, v in means.items() if v is not None}, "subjects": subjects}


@dataclass
class Options:
    """`tenfold eval mmlu` flags and a suite's mmlu: keys, each a keyword argument of run_mmlu."""
    preset: Literal["paper", "lm-eval-harness"] = setting("paper", "chat template + 'A', mean of subjects (paper) "
                                                                   "or raw + ' A', mean of questions")
    data: str | None = setting(None, "MMLU folder (test/<subject>_test.csv) or JSONL file (default: cais/mmlu "
                                     "from the HF hub)")
    subjects: list[str] | None = setting(None, "comma-separated (default: all)")
    limit: int | None = setting(None, "only the first N questions of each subject")


def run_mmlu(backend, output_dir: str | Path, preset: str = "paper", data: str | Path | None = None,
             subjects: list[str] | None = None, limit: int | None = None, overwrite: bool = False) -> dict:
    """Score every question into output_dir (mmlu.json, mmlu.summary.json, mmlu.predictions.jsonl).

    subjects: only these; limit: the first N questions of each subject.
    """
    if preset not in PRESETS:
        raise RecipeError(f"unknown MMLU preset {preset!r}; use one of {', '.join(PRESETS)}")
    settings = PRESETS[preset]
    questions = load_questions(data)
    if subjects:
        unknown = set(subjects) - {q["subject"] for q in questions}
        if unknown:
            raise UserError(f"mmlu: no questions for {', '.join(sorted(unknown))} in the data")
        questions = [q for q in questions if q["subject"] in subjects]
    if limit is not None:
        questions = [q for q in questions if int(q["id"].rsplit("/", 1)[1]) < limit]
    if backend.tokenizer is None:
        raise UserError(f"mmlu: {backend.name} has no tokenizer; letter scores need the transformers backend")
    appended, letter_ids = letter_token_ids(backend.tokenizer, settings["prefix"])

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "mmlu.predictions.jsonl"
    claim_predictions(backend, path, {"preset": preset, "data": data}, overwrite)

    def predict(batch: list[dict]) -> list[dict]:
        logprobs = backend.next_token_logprobs([format_prompt(q) + appended for q in batch], chat=settings["chat"])
        records = []
        for q, row in zip(batch, logprobs[:, letter_ids].tolist()):
            prediction = max(range(4), key=lambda i: row[i])
            records.append({**q, "letter_logprobs": row, "prediction": prediction,
                            "correct": int(prediction == q["answer"])})
        return records

    records = resume_cases(questions, path, predict, getattr(backend, "batch_size", 8), "mmlu")
    summary = {"benchmark": "mmlu", "model": describe(backend), "preset": preset,
               "average": f"over {settings['average']}", "questions": len(records),
               **accuracies(records, settings["average"], settings["categories"]),
               "paper_reported": paper_reported(backend.name, "mmlu")}
    return write_outputs(out, "mmlu", records, summary)
