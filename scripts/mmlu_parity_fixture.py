"""Regenerate tests/fixtures/mmlu_parity.json: the paper's eval_mmlu.py prompts, letter scores and accuracies.

    git -C /path/to/FlagEmbedding archive 9f7dcd2 Long_LLM | tar -x -C /tmp/fe   # or a checkout at 9f7dcd2
    PYTHONPATH=src HF_HUB_OFFLINE=1 python scripts/mmlu_parity_fixture.py /tmp/fe

The argument is a FlagEmbedding tree holding Long_LLM/longllm_qlora (the paper's commit 9f7dcd2) or
research/Long_LLM/longllm_qlora. Nothing of its code is stored; the fixture holds token ids, scores and hashes.

It runs main() of main/eval_mmlu.py step by step on `build_records()` (MMLU-shaped records in the
reference's test.json layout, query_id/query/subject/choices/answer: 8 subjects of the 4 categories, 1 to 4
questions each, unicode, long questions, whitespace that the reference strips): load_dataset("json") and
map(process_mmlu(...), batched, with_indices) with chat template "llama-3" (src/chat.py's real
apply_chat_template with labels, the reference's remove_eos of the generation config's eos ids), a
DataLoader of batch size 8 (main()'s default: 2 questions x 4 options) with its own DefaultDataCollator
(left padding, ModelArgs' default), its own evaluate_nll (mean NLL of the labelled tokens) and its own
evaluate_mmlu (argmin NLL, accuracy per subject, mean of subjects per category and overall). Left out:
num_proc=32 of the map and accelerator.prepare (one CPU process: neither changes a row or a batch).
evaluate_mmlu at 9f7dcd2 appends the overall to metrics["All"] but prints metrics["all"], an empty list
(fixed later in FlagEmbedding); the fixture keeps what it printed and, from its own metrics dict, what it
computed (`Recording` keeps evaluate_mmlu's defaultdicts: the lists it averages are its per-subject
accuracies).

The model is `write_model()`'s copy of tenfold/tiny-llama (random weights, shipped in src/tenfold/assets),
float32, with two changes that make it score as the paper's Llama-3-8B-Instruct is set up to:
- its tokenizer adds the BOS, as Llama-3's does (the reference's label arithmetic counts one BOS token;
  tiny-llama's own tokenizer adds none, and the labels would then miss the letter);
- its generation config's eos ids are Llama-3-8B-Instruct's (<|end_of_text|>, <|eot_id|>), so
  remove_eos drops the <|eot_id|> closing the assistant's letter and only the letter is scored;
and one that keeps the test off near ties: the output rows of "A".."D" are LETTER_SCALE times their own,
then shifted along the mean final hidden state of the fixture's prompts so that all four have the same
logit there. With random weights the letters' scores differ by ~0.01 and one letter wins every case; so
changed they differ by about 0.3, all four letters are predicted, and no case is decided by less than
MIN_MARGIN. tests/eval/test_mmlu.py imports build_records, records_sha256, write_model from here.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import random
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as a script, or loaded by the tests
import fixture_files  # noqa: E402
import flagembedding_reference as reference  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mmlu_parity.json"
MODEL = "tenfold/tiny-llama"
BATCH_SIZE = 8
LETTERS = ["A", "B", "C", "D"]
LETTER_SCALE = 50.0
MIN_MARGIN = 1e-3  # the least NLL gap between a case's best and second letter the fixture accepts
# subject -> questions (unequal: the mean of subjects and the mean of questions differ), 2 per category
SUBJECTS = {"abstract_algebra": 4, "college_physics": 2, "econometrics": 3, "sociology": 1, "philosophy": 3,
            "world_religions": 2, "virology": 3, "global_facts": 2}
WORDS = ["the", "value", "of", "x", "=", "42", "1984", "is", "which", "Paris", "river", "résumé", "Zürich", "—",
         "東京", "emoji🙂", "f(x)", "energy", "mass", "law", "virus", "cell", "it's", "U.S.", "e.g.", "“quoted”",
         "data,", "end.", "Why?", "3:", "√2", "π", "naïve", "Ωmega"]


def build_records(subjects: dict[str, int] = SUBJECTS) -> list[dict]:
    """Deterministic records in the reference's test.json layout (query_id is the row, as its code needs)."""
    rng = random.Random(20240501)
    answers = random.Random(8)  # not in a zero-shot prompt; this seed gives each category its own accuracy
    records = []
    for subject, count in subjects.items():
        for i in range(count):
            query = " ".join(rng.choice(WORDS) for _ in range(rng.choice((5, 20, 90)))) + " ?"
            if i == 1:  # surrounding whitespace (stripped by the reference) and a newline inside (kept)
                query = "  " + query.replace(" ", "\n", 1) + " \n"
            choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) for _ in LETTERS]
            choices[i % 4] += " "  # choices are not stripped
            records.append({"query_id": len(records), "query": query, "subject": subject, "choices": choices,
                            "answer": answers.randrange(4)})
    return records


def records_sha256(records: list[dict]) -> str:
    return hashlib.sha256(json.dumps(records, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def bos_tokenizer(tokenizer):
    """The tokenizer, adding the BOS before every text as Llama-3's does."""
    from tokenizers import processors

    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tokenizer.bos_token_id)])
    return tokenizer


def write_model(folder: Path, prompt_ids: list[list[int]]) -> Path:
    """tenfold/tiny-llama, its tokenizer adding the BOS, Llama-3-Instruct's eos ids and the letters' rows
    scaled and levelled on the mean last hidden state of `prompt_ids` (see the docstring)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tenfold.models import load_tokenizer, shipped_model

    model = AutoModelForCausalLM.from_pretrained(shipped_model(MODEL), dtype="float32").eval()
    tokenizer = bos_tokenizer(load_tokenizer(MODEL))
    vocab = tokenizer.get_vocab()
    letters = [vocab[letter] for letter in LETTERS]
    with torch.no_grad():
        states = [model.model(torch.tensor([ids])).last_hidden_state[0, -1] for ids in prompt_ids]
        mean = torch.stack(states).mean(0)
        rows = model.get_output_embeddings().weight
        scaled = LETTER_SCALE * rows[letters]
        rows[letters] = scaled + ((rows[letters[0]] - scaled) @ mean)[:, None] * mean / mean.dot(mean)
    model.generation_config.eos_token_id = [vocab["<|end_of_text|>"], vocab["<|eot_id|>"]]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_reference(root: Path):
    """main.eval_mmlu of the tree with its own collator, evaluate_nll and makedirs (src/utils.py,
    src/modeling_utils.py), and the stand-ins of flagembedding_reference for the rest."""
    module, qlora = reference.load_reference(root, "eval_mmlu", evaluate_nll=None, remove_eos=None)
    absent = importlib.util.find_spec("pytz") is None
    if absent:  # src/utils.py imports it for FileLogger's clock, not used here; pandas must not see the stand-in
        reference.stand_in("pytz")
    utils, modeling = importlib.import_module("src.utils"), importlib.import_module("src.modeling_utils")
    if absent:
        del sys.modules["pytz"]
    module.DefaultDataCollator, module.makedirs = utils.DefaultDataCollator, utils.makedirs
    module.evaluate_nll = modeling.evaluate_nll
    return module, qlora


class Recording(defaultdict):
    """evaluate_mmlu's defaultdicts, kept (`made`): `averaged` holds each list it replaced by its mean."""
    made: list[Recording] = []

    def __init__(self, *args):
        super().__init__(*args)
        self.averaged = {}
        Recording.made.append(self)

    def __setitem__(self, key, value):
        if key in self:
            self.averaged[key] = list(self[key])
        super().__setitem__(key, value)


def reference_rows(module, tokenizer, data: Path, eos_token_id, cache: Path):
    """main()'s dataset: load_dataset("json") mapped by process_mmlu (4 rows per question)."""
    import datasets

    dataset = datasets.load_dataset("json", data_files=str(data), split="train", cache_dir=str(cache))
    process = module.process_mmlu(tokenizer, chat_template="llama-3", eos_token_id=eos_token_id, few_shot=0,
                                  train_data=None, cache_dir=str(cache))
    return dataset.map(process, remove_columns=dataset.column_names, batched=True, with_indices=True)


def reference_nll(module, model, tokenizer, rows) -> dict:
    """main()'s evaluate_nll over its DataLoader: {query index: [NLL of A, B, C, D]}."""
    from torch.utils.data import DataLoader

    loader = DataLoader(rows, batch_size=BATCH_SIZE, collate_fn=module.DefaultDataCollator(tokenizer=tokenizer))
    return dict(module.evaluate_nll(model, loader, None))


def reference_metrics(module, data: Path, nll: dict, folder: Path) -> dict:
    """evaluate_mmlu's printed metrics, the ones it computed, its per-subject accuracies and predictions."""
    Recording.made.clear()
    module.defaultdict = Recording
    try:
        printed = module.evaluate_mmlu(str(data), str(folder / "results.json"), nll)
    finally:
        module.defaultdict = defaultdict
    tasks, metrics = Recording.made
    with open(folder / "results.json") as f:
        predictions = [json.loads(line)["output"] for line in f]
    computed = {k: metrics[k] for k in ("STEM", "Social Sciences", "Humanities", "others", "All")}
    return {"printed": printed, "computed": computed, "predictions": predictions,
            "subjects": dict(zip(tasks, metrics.averaged["All"], strict=True))}


def split_row(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(the prompt, the labelled tokens after it) of one process_mmlu row."""
    start = next(i for i, label in enumerate(labels) if label != -100)
    if labels[start:] != input_ids[start:] or any(label != -100 for label in labels[:start]):
        raise SystemExit(f"a row's labels are not one run at its end: {labels}")
    return input_ids[:start], input_ids[start:]


def fixture_cases(records: list[dict], rows, nll: dict, predictions: list[int]) -> list[dict]:
    cases = []
    for record, prediction in zip(records, predictions, strict=True):
        options = [split_row(rows[4 * record["query_id"] + i]["input_ids"],
                             rows[4 * record["query_id"] + i]["labels"]) for i in range(4)]
        if len({tuple(prompt) for prompt, _ in options}) != 1:
            raise SystemExit(f"query {record['query_id']}: the 4 options' prompts differ")
        cases.append({"query_id": record["query_id"], "subject": record["subject"], "answer": record["answer"],
                      "prompt_ids": options[0][0], "letter_ids": [letter for _, letter in options],
                      "nll": nll[record["query_id"]], "prediction": prediction})
    return cases


def check_decisive(cases: list[dict]) -> None:
    """Exit unless every case is decided by MIN_MARGIN and every letter is predicted somewhere."""
    margins = [sorted(c["nll"])[1] - sorted(c["nll"])[0] for c in cases]
    if min(margins) < MIN_MARGIN or {c["prediction"] for c in cases} != set(range(4)):
        raise SystemExit(f"the cases are not decisive (least margin {min(margins):.2g}, predicted "
                         f"{sorted({c['prediction'] for c in cases})}): change LETTER_SCALE or the records")


def run_reference(module, records: list[dict], tmp: Path) -> tuple[list[dict], dict]:
    from transformers import AutoModelForCausalLM

    from tenfold.models import load_tokenizer

    data = tmp / "test.json"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tokenizer = bos_tokenizer(load_tokenizer(MODEL))
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eot_id|>")]  # write_model's
    rows = reference_rows(module, tokenizer, data, eos, tmp / "cache")
    prompts = [split_row(rows[4 * i]["input_ids"], rows[4 * i]["labels"])[0] for i in range(len(records))]
    model = AutoModelForCausalLM.from_pretrained(write_model(tmp / "model", prompts), dtype="float32").eval()
    if model.generation_config.eos_token_id != eos:
        raise SystemExit(f"write_model's eos ids are {model.generation_config.eos_token_id}, not {eos}")
    tokenizer = bos_tokenizer(load_tokenizer(str(tmp / "model")))
    tokenizer.padding_side = "left"  # ModelArgs' padding_side
    nll = reference_nll(module, model, tokenizer, rows)
    metrics = reference_metrics(module, data, nll, tmp)
    cases = fixture_cases(records, rows, nll, metrics.pop("predictions"))
    check_decisive(cases)
    return cases, metrics


def build_fixture(root: Path) -> dict:
    from tenfold.models import shipped_model

    module, qlora = load_reference(root)
    records = build_records()
    with tempfile.TemporaryDirectory() as tmp:
        cases, metrics = run_reference(module, records, Path(tmp))
    weights = Path(shipped_model(MODEL)) / "model.safetensors"  # write_model's source
    category_map = json.dumps(module.SUBJECT_2_CATEGORY, sort_keys=True).encode()
    return {
        "note": "FlagEmbedding's eval_mmlu.py (process_mmlu with llama-3, evaluate_nll in batches of 8, "
                "evaluate_mmlu) on scripts/mmlu_parity_fixture.py:build_records() with write_model()'s "
                "tenfold/tiny-llama; regenerate with that script.",
        **reference.provenance(root, qlora, "eval_mmlu.py"),
        "model": MODEL, "model_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "letter_scale": LETTER_SCALE, "batch_size": BATCH_SIZE, "records_sha256": records_sha256(records),
        "subject_category_sha256": hashlib.sha256(category_map).hexdigest(),
        **metrics, "cases": cases,
    }


def main() -> None:
    fixture, out = fixture_files.write_fixture(__doc__, "a FlagEmbedding tree at the paper's commit 9f7dcd2",
                                               build_fixture, FIXTURE)
    right = sum(c["prediction"] == c["answer"] for c in fixture["cases"])
    print(f"wrote {out}: {len(fixture['cases'])} cases, {right} right; computed {fixture['computed']}")


if __name__ == "__main__":
    main()
