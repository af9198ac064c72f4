"""Regenerate tests/fixtures/longbench_paper_parity.json: the paper's eval_longbench.py prompts and predictions.

    git -C /path/to/FlagEmbedding archive 9f7dcd2 Long_LLM | tar -x -C /tmp/fe   # or a checkout at 9f7dcd2
    PYTHONPATH=src HF_HUB_OFFLINE=1 python scripts/longbench_paper_parity_fixture.py /tmp/fe

The argument is a FlagEmbedding tree holding Long_LLM/longllm_qlora (the paper's commit 9f7dcd2) or
research/Long_LLM/longllm_qlora. Nothing of its code is stored; the fixture holds token ids, predictions
and hashes.

Prompts: the reference's own `process_longbench` (main/eval_longbench.py) with its own DATASET2PROMPT
(main/longbench_utils.py), template "llama-3" (src/chat.py's apply_chat_template) and the middle cut, run
on longbench_fixture_inputs.build_records() (several records per dataset, most longer than MAX_LENGTH so
the cut triggers) with tenfold's shipped tokenizer tenfold/tiny-llama. Imports it has no use for here (the
model loader, accelerate's pieces, fuzzywuzzy; transformers.tokenization_utils in transformers >= 5) are
stand-ins. The tokenizer decodes as the paper's transformers 4.39.3 (its README's pin) did
(transformers4.Transformers4Decode): the tokenizer's clean_up_tokenization (" ." -> ".", " 's" -> "'s", ...)
when its config asks for it or says nothing, as tiny-llama's says nothing and Llama-3-8B-Instruct's asks for
it; transformers 5 skips it for a BPE tokenizer. `input_ids`: the model's input; `clean_up_changes_prompt`:
whether this transformers' own decode of the cut would have given other ids.

Predictions: longbench_fixture_inputs.write_model()'s copy of tenfold/tiny-llama under main()'s
model.generate kwargs: eos_token_id = the generation config's eos ids with the "\\n" token appended
(tokenizer.encode("\\n", add_special_tokens=False)[-1]), begin_suppress_tokens = that same list on the 7
datasets main() names, max_new_tokens = DATASET2MAXNEWTOKENS, greedy (do_sample False), batch size 1; the
new ids (`output_ids`) are decoded with skip_special_tokens=True as main() does, by the 4.39.3 decode
(`prediction`; `clean_up_changes_prediction`: whether this transformers' decode gives another text). It is
plain transformers generate, not tenfold's. The copy's output rows and its generation config's end ids make
the stop at "\\n", the stop at an end token and the first-token ban each decide some cases.
tests/eval/test_longbench.py checks tenfold's paper preset against it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as a script, or loaded by the tests
import fixture_files  # noqa: E402
import flagembedding_reference as reference  # noqa: E402
import longbench_fixture_inputs as inputs  # noqa: E402
from transformers4 import Transformers4Decode  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "longbench_paper_parity.json"


def load_reference(root: Path):
    """main.eval_longbench of the tree, with the stand-ins of flagembedding_reference."""
    return reference.load_reference(root, "eval_longbench")


def reference_input_ids(module, tokenizer, records: list[dict]) -> list[list[int]]:
    """process_longbench as main() builds it (its own prompts, llama-3, the middle cut), on one batch."""
    process = module.process_longbench(tokenizer, chat_template="llama-3", max_length=inputs.MAX_LENGTH,
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
    from tenfold.models import load_tokenizer

    module, qlora = load_reference(root)
    tokenizer = load_tokenizer(inputs.MODEL)
    decode4 = Transformers4Decode(tokenizer)  # the paper's transformers 4.39.3
    records = inputs.build_records()
    ids = reference_input_ids(module, decode4, records)
    ids_transformers5 = reference_input_ids(module, tokenizer, records)
    with tempfile.TemporaryDirectory() as tmp:
        model = inputs.load_model(Path(tmp))
    cases = []
    for record, prompt_ids, prompt_ids5 in zip(records, ids, ids_transformers5):
        output = reference_generate(module, model, tokenizer, record["dataset"], prompt_ids)
        prediction = decode4.batch_decode([output], skip_special_tokens=True)[0]
        cases.append({"id": record["_id"], "dataset": record["dataset"], "input_ids": prompt_ids,
                      "output_ids": output, "prediction": prediction,
                      "clean_up_changes_prompt": prompt_ids != prompt_ids5,
                      "clean_up_changes_prediction": prediction != tokenizer.decode(output, skip_special_tokens=True)})
    return {
        "note": "FlagEmbedding's eval_longbench.py process_longbench (llama-3, max_length 200) and main()'s "
                "generate kwargs, with the decode of its transformers 4.39.3, on "
                "scripts/longbench_fixture_inputs.py:build_records() with tenfold/tiny-llama; regenerate with "
                "scripts/longbench_paper_parity_fixture.py.",
        **reference.provenance(root, qlora, "eval_longbench.py"),
        **inputs.inputs_record(records),  # its environment: the same as provenance's
        "prompts_sha256": hashlib.sha256(json.dumps(module.DATASET2PROMPT, sort_keys=True).encode()).hexdigest(),
        "cases": cases,
    }


def main() -> None:
    fixture, out = fixture_files.write_fixture(__doc__, "a FlagEmbedding tree at the paper's commit 9f7dcd2",
                                               build_fixture, FIXTURE)
    prompts, predictions = (sum(c[f"clean_up_changes_{what}"] for c in fixture["cases"])
                            for what in ("prompt", "prediction"))
    print(f"wrote {out}: {len(fixture['cases'])} cases; the 4.39.3 clean-up changes {prompts} prompts and "
          f"{predictions} predictions")


if __name__ == "__main__":
    main()
