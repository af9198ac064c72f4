"""What both LongBench parity fixture makers run the reference code on: the records and the tiny model.

scripts/longbench_paper_parity_fixture.py (the paper's eval_longbench.py) and
scripts/longbench_official_parity_fixture.py (LongBench's pred.py) share them, and tests/eval/test_longbench.py
imports them from here to run tenfold on the same. `build_records()`: tiny generated LongBench-shaped records,
3 per dataset of DATASETS, most longer than MAX_LENGTH tokens so that the middle cut triggers, with the words
the decode's space clean-up rewrites. `write_model()`: a copy of tenfold's shipped tenfold/tiny-llama (random
weights, src/tenfold/assets) whose output rows make "\\n" win where the model would pick "$" (mid-answer),
<|eot_id|> where it would pick "í" (a frequent first token) and " ." where it would pick " f": random weights
never pick them, so without this neither a stop at "\\n", a stop at an end token, a first-token ban nor the
space clean-up of a prediction (" ." -> ".") would decide any case. Its generation config lists the end ids
Llama-3-8B-Instruct's does (<|end_of_text|>, <|eot_id|>).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

MODEL = "tenfold/tiny-llama"
MAX_LENGTH = 200
DATASETS = ["narrativeqa", "qasper", "hotpotqa", "trec", "samsum", "lcc", "passage_count", "gov_report"]
WORDS = ["the", "report", "Paris", "river", "said", "went", "to", "of", "and", "in", "is", "was", "1984", "42",
         "résumé", "Zürich", "—", "it's", "U.S.", "e.g.", "(see", "below)", "“quoted”", "data,", "end.", "Why?",
         "東京", "emoji🙂", "Paragraph", "3:", "def", "x", "=", "foo(bar)", "\n", "\n\n",
         ".", ",", "'s", "n't", "?", "!", "'re", "'m", "'ve"]  # the last ones: what the decode's clean-up rewrites


def build_records() -> list[dict]:
    """Deterministic LongBench-shaped records: 3 per dataset, of about 40, 250 and 600 words (answers, classes
    and lengths as LongBench's records have them, for what reads them; no test scores them). The last samsum
    question ends in " Paris", after which write_model's model would begin with <|eot_id|> (found by trying
    the words): samsum's ban on a first end token (pred.py's min_length, the paper's begin_suppress_tokens)
    decides that case."""
    rng = random.Random(20240430)
    records = []
    for dataset in DATASETS:
        for i, words in enumerate((40, 250, 600)):
            context = " ".join(rng.choice(WORDS) for _ in range(words))
            question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + " ?"
            if (dataset, i) == ("samsum", 2):  # where the model would begin with <|eot_id|>: a first-token ban decides
                question += " Paris"
            classes = rng.sample(WORDS, 4) if dataset == "trec" else None  # a classification task's labels
            records.append({"input": question, "context": context, "dataset": dataset, "_id": f"{dataset}-{i}",
                            "answers": [classes[0] if classes else rng.choice(WORDS)], "all_classes": classes,
                            "length": words})
    return records


def records_sha256(records: list[dict]) -> str:
    return hashlib.sha256(json.dumps(records, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def model_sha256() -> str:
    """The hash of write_model's source weights."""
    from tenfold.models import shipped_model

    return hashlib.sha256((Path(shipped_model(MODEL)) / "model.safetensors").read_bytes()).hexdigest()


def inputs_record(records: list[dict]) -> dict:
    """What a fixture says of its inputs, which the test checks before comparing: the records, the model,
    the cut and the environment it was made in."""
    import transformers

    return {"environment": {"python": sys.version.split()[0], "transformers": transformers.__version__},
            "model": MODEL, "model_sha256": model_sha256(), "max_length": MAX_LENGTH,
            "records_sha256": records_sha256(records)}


def write_model(folder: Path) -> Path:
    """tenfold/tiny-llama with "\\n", <|eot_id|> and " ." winning where "$", "í" and " f" would (see the
    docstring)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tenfold.models import load_tokenizer, shipped_model

    model = AutoModelForCausalLM.from_pretrained(shipped_model(MODEL), dtype="float32")
    tokenizer = load_tokenizer(MODEL)
    vocab = tokenizer.get_vocab()
    with torch.no_grad():
        rows = model.get_output_embeddings().weight
        rows[vocab["Ċ"]] = 1.01 * rows[vocab["$"]]  # "Ċ": the byte-level BPE's newline
        rows[vocab["<|eot_id|>"]] = 1.01 * rows[vocab["í"]]
        rows[vocab["Ġ."]] = 1.01 * rows[vocab["Ġf"]]  # "Ġ": the byte-level BPE's space
    model.generation_config.eos_token_id = [vocab["<|end_of_text|>"], vocab["<|eot_id|>"]]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_model(folder: Path):
    """write_model's copy, loaded for generation (float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(write_model(folder), dtype="float32").eval()
