"""Regenerate tests/fixtures/longbench_paper_parity.json: the paper's eval_longbench.py prompts and predictions.

    git -C /path/to/FlagEmbedding archive 9f7dcd2 Long_LLM | tar -x -C /tmp/fe   # or a checkout at 9f7dcd2
    PYTHONPATH=src HF_HUB_OFFLINE=1 python scripts/longbench_paper_parity_fixture.py /tmp/fe

The argument is a FlagEmbedding tree holding Long_LLM/longllm_qlora (the paper's commit 9f7dcd2) or
research/Long_LLM/longllm_qlora. Nothing of its code is stored; the fixture holds token ids, predictions
and hashes.

Prompts: the reference's own `process_longbench` (main/eval_longbench.py) with its own DATASET2PROMPT
(main/longbench_utils.py), template "llama-3" (src/chat.py's apply_chat_template) and the middle cut, run
on `build_records()` (tiny generated records, several per dataset, most longer than MAX_LENGTH so the cut
triggers) with tenfold's shipped tokenizer tenfold/tiny-llama. Imports it has no use for here (the model
loader, accelerate's pieces, fuzzywuzzy; transformers.tokenization_utils in transformers >= 5) are stand-ins.
Two decodes of the cut: `input_ids` as this transformers decodes (transformers 5: no space clean-up for a
BPE tokenizer), and `input_ids_clean_up` as the paper's transformers 4.39.3 (its README's pin) did: the
tokenizer's clean_up_tokenization (" ." -> ".", " 's" -> "'s", ...) when its config asks for it or says
nothing, as tiny-llama's says nothing and Llama-3-8B-Instruct's asks for it.

Predictions: `write_model()`'s copy of the tiny model tenfold/tiny-llama (random weights, shipped in
src/tenfold/assets) under main()'s model.generate kwargs: eos_token_id = the generation config's eos ids
with the "\\n" token appended (tokenizer.encode("\\n", add_special_tokens=False)[-1]), begin_suppress_tokens
= that same list on the 7 datasets main() names, max_new_tokens = DATASET2MAXNEWTOKENS, greedy (do_sample
False), batch size 1; the new ids are decoded with skip_special_tokens=True as main() does. It is plain
transformers generate, not tenfold's. Random weights never pick "\\n" or an end token, so the copy's output
rows make them win where the model would pick two of its common tokens ("\\n" for "$" mid-answer, <|eot_id|>
for "í", a frequent first token), and its generation config lists the end ids Llama-3-8B-Instruct's does
(<|end_of_text|>, <|eot_id|>), so that the stop at "\\n", the stop at an end token and the first-token ban
each decide some cases. tests/eval/test_longbench.py imports build_records, records_sha256, write_model and
reference (flagembedding_reference: Transformers4Decode) from here.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as a script, or loaded by the tests
import flagembedding_reference as reference  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "longbench_paper_parity.json"
MODEL = "tenfold/tiny-llama"
MAX_LENGTH = 200
DATASETS = ["narrativeqa", "qasper", "hotpotqa", "trec", "samsum", "lcc", "passage_count", "gov_report"]
WORDS = ["the", "report", "Paris", "river", "said", "went", "to", "of", "and", "in", "is", "was", "1984", "42",
         "résumé", "Zürich", "—", "it's", "U.S.", "e.g.", "(see", "below)", "“quoted”", "data,", "end.", "Why?",
         "東京", "emoji🙂", "Paragraph", "3:", "def", "x", "=", "foo(bar)", "\n", "\n\n",
         ".", ",", "'s", "n't", "?", "!", "'re", "'m", "'ve"]  # the last ones: what the decode's clean-up rewrites


def build_records() -> list[dict]:
    """Deterministic LongBench-shaped records: 3 per dataset, of about 40, 250 and 600 words."""
    rng = random.Random(20240430)
    records = []
    for dataset in DATASETS:
        for i, words in enumerate((40, 250, 600)):
            context = " ".join(rng.choice(WORDS) for _ in range(words))
            question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + " ?"
            records.append({"input": question, "context": context, "dataset": dataset, "_id": f"{dataset}-{i}"})
    return records


def records_sha256(records: list[dict]) -> str:
    return hashlib.sha256(json.dumps(records, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def write_model(folder: Path) -> Path:
    """tenfold/tiny-llama with "\\n" and <|eot_id|> winning where "$" and "í" would (see the docstring)."""
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
    model.generation_config.eos_token_id = [vocab["<|end_of_text|>"], vocab["<|eot_id|>"]]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_reference(root: Path):
    """main.eval_longbench of the tree, with the stand-ins of flagembedding_reference."""
    return reference.load_reference(root, "eval_longbench")


def reference_input_ids(module, tokenizer, records: list[dict]) -> list[list[int]]:
    """process_longbench as main() builds it (its own prompts, llama-3, the middle cut), on one batch."""
    process = module.process_longbench(tokenizer, chat_template="llama-3", max_length=MAX_LENGTH,
                                       prompt_templates=module.DATASET2PROMPT, truncate_from_middle=True)
    batch = {key: [r[key] for r in records] for key in ("input", "context", "dataset")}
    return process(batch, list(range(len(records))))["input_ids"]


def reference_generate(module, model, tokenizer, dataset: str, input_ids: list[int]) -> list[int]:
    """main()'s model.generate call for one sample (batch size 1, greedy), its new ids."""
    import torch

    eos_token_id = model.generation_config.eos_token_id
    if isinstance(eos_token_id, int):
        eos_token_id = [eos_token_id]
    eos_token_id = list(eos_token_id) + [tokenizer.encode("\n", add_special_tokens=False)[-1]]
    kwargs = {"eos_token_id": eos_token_id}
    if dataset in ["2wikimqa", "hotpotqa", "musique", "multifieldqa_en", "qasper", "narrativeqa", "samsum"]:
        kwargs["begin_suppress_tokens"] = eos_token_id
    x = torch.tensor([input_ids])
    with torch.no_grad():
        output = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                max_new_tokens=module.DATASET2MAXNEWTOKENS[dataset], **kwargs)
    return output[0, x.shape[1]:].tolist()


def build_fixture(root: Path) -> dict:
    from transformers import AutoModelForCausalLM

    from tenfold.models import load_tokenizer, shipped_model

    module, qlora = load_reference(root)
    tokenizer = load_tokenizer(MODEL)
    records = build_records()
    ids = reference_input_ids(module, tokenizer, records)
    ids_clean_up = reference_input_ids(module, reference.Transformers4Decode(tokenizer), records)
    with tempfile.TemporaryDirectory() as tmp:
        model = AutoModelForCausalLM.from_pretrained(write_model(Path(tmp)), dtype="float32").eval()
    cases = []
    for record, prompt_ids, clean_ids in zip(records, ids, ids_clean_up):
        output = reference_generate(module, model, tokenizer, record["dataset"], prompt_ids)
        cases.append({"id": record["_id"], "dataset": record["dataset"], "input_ids": prompt_ids,
                      "input_ids_clean_up": clean_ids, "output_ids": output,
                      "prediction": tokenizer.batch_decode([output], skip_special_tokens=True)[0]})
    weights = Path(shipped_model(MODEL)) / "model.safetensors"  # write_model's source
    return {
        "note": "FlagEmbedding's eval_longbench.py process_longbench (llama-3, max_length 200) and main()'s "
                "generate kwargs on scripts/longbench_paper_parity_fixture.py:build_records() with "
                "tenfold/tiny-llama; regenerate with that script.",
        **reference.provenance(root, qlora, "eval_longbench.py"),
        "model": MODEL, "model_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "max_length": MAX_LENGTH, "records_sha256": records_sha256(records),
        "prompts_sha256": hashlib.sha256(json.dumps(module.DATASET2PROMPT, sort_keys=True).encode()).hexdigest(),
        "cases": cases,
    }


def main() -> None:
    out, fixture = reference.write_fixture(__doc__, FIXTURE, build_fixture)
    cut = sum(c["input_ids"] != c["input_ids_clean_up"] for c in fixture["cases"])
    print(f"wrote {out}: {len(fixture['cases'])} cases, {cut} where the 4.39.3 clean-up changes the prompt")


if __name__ == "__main__":
    main()
