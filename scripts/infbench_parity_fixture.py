"""Regenerate tests/fixtures/infbench_parity.json: InfiniteBench prompts, predictions and scores as made by
the paper's eval_infbench.py (FlagEmbedding) and by InfiniteBench's own eval_yarn_mistral.py + compute_scores.py.

    git -C /path/to/FlagEmbedding archive 9f7dcd2 Long_LLM | tar -x -C /tmp/fe        # the paper's commit
    git -C /path/to/InfiniteBench archive 88b3daa src | tar -x -C /tmp/ib             # tenfold's PROMPT_URL pin
    git -C /path/to/evaluate archive v0.4.1 metrics/rouge | tar -x -C /tmp/evaluate   # evaluate.load("rouge")
    pip install --target /tmp/ibpkgs --no-deps evaluate==0.4.1 jieba   # compute_scores.py / eval_utils.py import
    PYTHONPATH=src:/tmp/ibpkgs HF_HUB_OFFLINE=1 python scripts/infbench_parity_fixture.py /tmp/fe /tmp/ib \\
        --rouge /tmp/evaluate/metrics/rouge

Arguments: a FlagEmbedding tree (Long_LLM/longllm_qlora or research/Long_LLM/longllm_qlora), an InfiniteBench
tree (its src/), and, offline, the folder of evaluate's rouge metric (compute_scores.py runs
`evaluate.load("rouge")` on import, which downloads it from the hub; evaluate 0.4.1 is InfiniteBench's pin).
Nothing of their code is stored; the fixture holds token ids, scores and hashes.

Records: `build_records()`, small deterministic InfiniteBench-shaped records of both tasks (words of the
LongBench maker: unicode, and punctuation the decode's clean-up rewrites), most longer than TRUNCATE_LENGTH
(odd, so each half is TRUNCATE_LENGTH // 2 tokens); one QA record puts multi-byte characters at the cut. Model:
the LongBench maker's write_model() copy of tenfold/tiny-llama (random weights; <|eot_id|> wins where "í"
would), its tokenizer. Each summary's record comes from a seed (SUMMARY_SEEDS) the model summarizes in under
250 tokens under both presets, so that the tests, generating up to 1,200, take seconds.

paper: main/eval_infbench.py's own process_infbench (create_prompt with infbench_utils' "mistral" templates,
the cut counted without special tokens, each half decoded on its own, the "llama-3" chat template of src/chat.py),
then main()'s model.generate (greedy, TASK_TO_MAX_NEW_TOKENS, the generation config's end tokens, batch 1),
batch_decode(skip_special_tokens=True), get_score_one and main()'s round(mean, 4).
official: eval_utils' create_prompt ("yarn-mistral") and load_model's pad = eos, eval_yarn_mistral.py's own
get_pred (truncate_by_tokens at TRUNCATE_LEN, set here to TRUNCATE_LENGTH, then chunk_generate: 128-token chunks
of prefill, then generate from the last token, eos = the tokenizer's eos), compute_scores' get_score_one and
get_score. chunk_generate was written for transformers 4.35's tuple KV caches: the model it is given
(`TupleCacheModel`) turns them into this transformers' DynamicCache and back, nothing else.

Decodes: both references pinned transformers 4.x (4.39.3, 4.35.0), whose decode cleaned up spaces
(" ." -> ".") as the tokenizer's config said or, silent (tiny-llama), by default; `transformers4.Transformers4Decode` of
scripts/flagembedding_reference.py does that. `input_ids_clean_up`, `output_ids`, `prediction` and the scores
are the references under that decode; `input_ids` the cut as this transformers decodes it (no clean-up);
`input_ids_bos` the 4.x cut with a tokenizer that adds a BOS, as Llama-3's does (the official cut counts it).
`extra` scores `extra_predictions()` (empty, multi-reference, long, unicode texts) with both metrics; where a
reference raises, the error's type is stored.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # as a script, or loaded by the tests
import flagembedding_reference as reference  # noqa: E402
import longbench_fixture_inputs as longbench  # noqa: E402
from transformers4 import Transformers4Decode  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "infbench_parity.json"
MODEL = longbench.MODEL
TRUNCATE_LENGTH = 151
TASKS = ("longbook_qa_eng", "longbook_sum_eng")
WORDS = longbench.WORDS
# words the tiny model often says, so that some answers score above 0
ANSWERS = ["fou", "hides", "bel", "cat", "finds", "the", "blue", "9", "98", "door"]
# (words, seed) of each summary's record: seeds (tried from 0 up) whose context the tiny model summarizes in under
# 250 tokens under both presets, so that the tests need not generate 1,200 tokens
SUMMARY_SEEDS = ((8, 4), (300, 3), (700, 0))
WIDE = ["東京", "emoji🙂", "résumé", "Zürich", "—", "“quoted”"]  # several byte-level tokens each


def _text(rng: random.Random, words: int, vocabulary=WORDS) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def build_records() -> dict[str, list[dict]]:
    """Per task, records in InfiniteBench's layout (id, context, input, answer, options)."""
    rng = random.Random(20240501)
    qa = []
    for i, words in enumerate((8, 160, 450, 800)):
        qa.append({"id": i, "context": _text(rng, words), "input": _text(rng, rng.randint(3, 9)) + " ?",
                   "answer": [_text(rng, rng.randint(1, 4), ANSWERS) for _ in range(1 + i % 2)], "options": []})
    middle = _text(rng, 120, WIDE)  # multi-byte characters where the cut falls
    qa.append({"id": 4, "context": f"{_text(rng, 60)} {middle} {_text(rng, 60)}", "input": "Where? 東京 ?",
               "answer": ["東京 fou", "Zürich résumé"], "options": []})
    summaries = []
    for i, (words, seed) in enumerate(SUMMARY_SEEDS):
        rng = random.Random(seed)
        summaries.append({"id": i, "context": _text(rng, words), "input": "",
                          "answer": [_text(rng, 40, WORDS + ANSWERS)], "options": []})
    return {"longbook_qa_eng": qa, "longbook_sum_eng": summaries}


def extra_predictions() -> list[dict]:
    """Hand-made predictions scored by both references' metrics (edge cases of F1 and ROUGE)."""
    rng = random.Random(5)
    long_a, long_b = _text(rng, 700), _text(rng, 700)
    # sentences without a "." of about 300 and 1,100 words: the rouge package's recursive LCS takes up to
    # len(a) + len(b) frames, so the second pair overflows Python's 1,000 (the paper's code scores that 0)
    greek = ["alpha", "beta", "gamma", "delta"]
    short_a, short_b, huge_a, huge_b = (_text(rng, n, greek) for n in (300, 300, 1100, 1100))
    qa = [("", ["two blue doors"]), ("Two blue doors.", ["two blue doors"]), ("The doors", ["a door", "the doors"]),
          ("an owl , the owl !", ["owl"]), ("Zürich résumé 東京", ["zürich", "東京"]), ("...", ["two"]),
          ("blue", ["", "blue doors"]), (long_a, [long_b[:300]]), ("it's U.S. e.g.", ["its us eg"])]
    summary = [("", ["the fox paints doors."]), ("The fox paints doors.\nAnna sleeps.", ["the fox paints doors"]),
               ("anna sleeps", ["a zebra", "anna sleeps"]), ("...", ["the fox"]), ("\n\n", ["the fox"]),
               ("Zürich résumé 東京. emoji🙂", ["zürich résumé 東京 emoji"]), (long_a, [long_b]),
               (short_a, [short_b]), (huge_a, [huge_b])]
    return [{"task": task, "prediction": prediction, "answers": answers}
            for task, rows in (("longbook_qa_eng", qa), ("longbook_sum_eng", summary)) for prediction, answers in rows]


def sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def bos_tokenizer(tokenizer):
    """A copy that adds <|begin_of_text|> to every text, as Llama-3's tokenizer does."""
    from tokenizers import processors

    tok = copy.deepcopy(tokenizer)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.bos_token_id)])
    return tok


class TupleCacheModel:
    """The model as chunk_generate uses it under transformers 4.35: `model.model.forward` and `model.generate`
    take and give the KV cache as a tuple of (keys, values) per layer. `generated`: generate's outputs."""

    class Inner:
        def __init__(self, inner):
            self.inner = inner

        def forward(self, past_key_values=None, **kwargs):
            outputs = self.inner.forward(past_key_values=as_cache(past_key_values), **kwargs)
            outputs.past_key_values = tuple((layer.keys, layer.values) for layer in outputs.past_key_values.layers)
            return outputs

    def __init__(self, model):
        self.wrapped, self.model, self.device, self.generated = model, self.Inner(model.model), model.device, []

    def generate(self, past_key_values=None, **kwargs):
        output = self.wrapped.generate(past_key_values=as_cache(past_key_values), **kwargs)
        self.generated.append(output)
        return output


def as_cache(past_key_values):
    from transformers import DynamicCache

    return None if past_key_values is None else DynamicCache(ddp_cache_data=past_key_values)


def load_infinitebench(root: Path, rouge: Path | None):
    """(eval_yarn_mistral, compute_scores, eval_utils) of InfiniteBench's src/, importable offline: its Yarn
    model class is a stand-in (load_model is not run), evaluate.load("rouge") reads `rouge` where given."""
    import importlib
    import importlib.util

    src = root / "src" if (root / "src" / "eval_yarn_mistral.py").is_file() else root
    if not (src / "eval_yarn_mistral.py").is_file():
        sys.exit(f"{root}: no (src/)eval_yarn_mistral.py; give an InfiniteBench tree")
    sys.path.insert(0, str(src))
    reference.stand_in("yarn_mistral").__path__ = []
    reference.stand_in("yarn_mistral.modeling_mistral_yarn", MistralForCausalLM=None)
    if importlib.util.find_spec("jieba") is None:  # eval_utils imports it for the Chinese tasks, not run here
        reference.stand_in("jieba")
    import evaluate

    if rouge is not None:
        load = evaluate.load
        evaluate.load = lambda name, *args, **kwargs: load(str(rouge) if name == "rouge" else name, *args, **kwargs)
    modules = [importlib.import_module(name) for name in ("eval_yarn_mistral", "compute_scores", "eval_utils")]
    return (*modules, src)


def outcome(score, *args):
    """A reference metric's value, or the type of what it raised."""
    try:
        return float(score(*args))
    except Exception as e:  # the reference crashes there; the fixture says how
        return {"error": type(e).__name__}


def paper_input_ids(module, tokenizer, task: str, records: list[dict]) -> list[list[int]]:
    """process_infbench as main() maps it over the data (the "llama-3" template, the middle cut)."""
    batch = {key: [record[key] for record in records] for key in records[0]}
    return module.process_infbench(batch, list(range(len(records))), tokenizer=tokenizer, chat_template="llama-3",
                                   task=task, prompt_template="mistral", max_length=TRUNCATE_LENGTH,
                                   truncate_from_middle=True)["input_ids"]


def paper_generate(module, model, task: str, input_ids: list[int]) -> list[int]:
    """main()'s model.generate for one sample (batch size 1; the paper's Args: do_sample False, no temperature
    or top_p given), its new ids."""
    import torch

    x = torch.tensor([input_ids])
    with torch.no_grad():
        output = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, temperature=None,
                                top_p=None, max_new_tokens=module.TASK_TO_MAX_NEW_TOKENS[task], synced_gpus=False)
    return output[0, x.shape[1]:].tolist()


def paper_cases(module, tokenizer, model, task: str, records: list[dict]) -> list[dict]:
    clean_up = Transformers4Decode(tokenizer)
    ids = paper_input_ids(module, tokenizer, task, records)
    ids_clean_up = paper_input_ids(module, clean_up, task, records)
    ids_bos = paper_input_ids(module, Transformers4Decode(bos_tokenizer(tokenizer)), task, records)
    cases = []
    for record, *prompt_ids in zip(records, ids, ids_clean_up, ids_bos):
        output = paper_generate(module, model, task, prompt_ids[1])
        prediction = clean_up.batch_decode([output], skip_special_tokens=True)[0]
        cases.append({"id": record["id"], "input_ids": prompt_ids[0], "input_ids_clean_up": prompt_ids[1],
                      "input_ids_bos": prompt_ids[2], "output_ids": output, "prediction": prediction,
                      "score": outcome(module.get_score_one, prediction, module.get_answer(record, task), task, None)})
    return cases


def official_case(ib, utils, cs, tokenizer, model, task: str, record: dict) -> dict:
    """One example of eval_yarn_mistral.py's loop (create_prompt, get_pred) and compute_scores' score of it."""
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = tok.eos_token  # load_model
    clean_up = Transformers4Decode(tok)
    prompt = utils.create_prompt(record, task, "yarn-mistral", "unused: the record holds its context")
    runner = TupleCacheModel(model)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress prints
        prediction = ib.get_pred(runner, clean_up, prompt, max_tokens=utils.DATA_NAME_TO_MAX_NEW_TOKENS[task])
        cuts = [ib.truncate_by_tokens(prompt, t, ib.TRUNCATE_LEN)
                for t in (tok, clean_up, Transformers4Decode(bos_tokenizer(tok)))]
    (generated,) = runner.generated
    answer = utils.get_answer(record, task)
    return {"id": record["id"], "input_ids": tok(cuts[0])["input_ids"], "input_ids_clean_up": tok(cuts[1])["input_ids"],
            "input_ids_bos": bos_tokenizer(tok)(cuts[2])["input_ids"], "output_ids": generated[0, 1:].tolist(),
            "prediction": prediction, "score": outcome(cs.get_score_one, prediction, answer, task, "yarn-mistral")}


def templates_ids(utils, tokenizer) -> dict[str, list[int]]:
    """The yarn_mistral templates of the two tasks as token ids (both references hold the same text)."""
    import importlib

    paper = importlib.import_module("main.infbench_utils").MODEL_TO_PROMPT_TEMPLATE["mistral"]
    official = utils.MODEL_TO_PROMPT_TEMPLATE["yarn-mistral"]
    ids = {}
    for task in TASKS:
        assert paper[task] == official[task], f"{task}: the paper's template is not InfiniteBench's"
        ids[task] = tokenizer(paper[task], add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids[task]) == paper[task]  # the ids give the text back
    return ids


def scores(cases: dict[str, list[dict]]) -> dict[str, float]:
    return {task: sum(c["score"] for c in rows) / len(rows) for task, rows in cases.items()}


def git_commit(root: Path, fallback: str) -> str:
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return commit.stdout.strip() if commit.returncode == 0 else fallback


def build_fixture(flagembedding: Path, infinitebench: Path, rouge: Path | None) -> dict:
    import transformers
    from transformers import AutoModelForCausalLM

    from tenfold.models import load_tokenizer, shipped_model

    module, qlora = reference.load_reference(flagembedding, "eval_infbench")
    ib, cs, utils, src = load_infinitebench(infinitebench, rouge)
    ib.TRUNCATE_LEN = TRUNCATE_LENGTH  # get_pred's cut (128K there)
    tokenizer = load_tokenizer(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        model = AutoModelForCausalLM.from_pretrained(longbench.write_model(Path(tmp)), dtype="float32").eval()
    records = build_records()
    paper = {task: paper_cases(module, tokenizer, model, task, rows) for task, rows in records.items()}
    official = {task: [official_case(ib, utils, cs, tokenizer, model, task, r) for r in rows]
                for task, rows in records.items()}
    extra = [{"paper": outcome(module.get_score_one, e["prediction"], e["answers"], e["task"], None),
              "official": outcome(cs.get_score_one, e["prediction"], e["answers"], e["task"], "yarn-mistral")}
             for e in extra_predictions()]
    paper_scores = scores(paper)
    weights = Path(shipped_model(MODEL)) / "model.safetensors"
    return {
        "note": "InfiniteBench longbook_qa_eng/longbook_sum_eng by FlagEmbedding's eval_infbench.py (paper) and "
                "InfiniteBench's eval_yarn_mistral.py + compute_scores.py (official) on "
                "scripts/infbench_parity_fixture.py:build_records() with tenfold/tiny-llama; regenerate with "
                "that script.",
        "flagembedding_commit": git_commit(flagembedding, "9f7dcd2 (an archive, no git)"),
        "infinitebench_commit": git_commit(infinitebench, "88b3daa (an archive, no git)"),
        "references": {"paper": [str((qlora / "main" / f).relative_to(flagembedding))
                                 for f in ("eval_infbench.py", "infbench_utils.py")],
                       "official": [str((src / f).relative_to(infinitebench)) for f in
                                    ("eval_yarn_mistral.py", "eval_utils.py", "compute_scores.py")]},
        "environment": environment(transformers.__version__),
        "model": MODEL, "model_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "truncate_length": TRUNCATE_LENGTH, "records_sha256": sha256(records),
        "extra_sha256": sha256(extra_predictions()), "template_ids": templates_ids(utils, tokenizer),
        "paper": {"scores": paper_scores, "scores_rounded": {t: round(s, 4) for t, s in paper_scores.items()},
                  "cases": paper},
        "official": {"scores": {task: cs.get_score([utils.get_answer(r, task) for r in rows],
                                                   [c["prediction"] for c in official[task]], task, "yarn-mistral")
                                for task, rows in records.items()}, "cases": official},
        "extra": extra,
    }


def environment(transformers_version: str) -> dict:
    from importlib.metadata import version

    return {"python": sys.version.split()[0], "transformers": transformers_version,
            **{name: version(name) for name in ("rouge", "rouge-score", "evaluate")}}


def dump(fixture: dict) -> str:
    """Indented, with each case on one line."""
    def one_per_line(rows: list) -> str:
        return "[\n    " + ",\n    ".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n   ]"

    layout = copy.deepcopy(fixture)
    marks = {}
    for preset in ("paper", "official"):
        for task in TASKS:
            marks[f"@{preset}/{task}@"] = one_per_line(fixture[preset]["cases"][task])
            layout[preset]["cases"][task] = f"@{preset}/{task}@"
    marks["@extra@"] = one_per_line(fixture["extra"])
    layout["extra"] = "@extra@"
    for task in TASKS:
        marks[f"@template/{task}@"] = json.dumps(fixture["template_ids"][task])
        layout["template_ids"][task] = f"@template/{task}@"
    text = json.dumps(layout, indent=1, ensure_ascii=False)
    for mark, rows in marks.items():
        text = text.replace(f'"{mark}"', rows)
    return text + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("flagembedding", type=Path, help="a FlagEmbedding tree at the paper's commit 9f7dcd2")
    parser.add_argument("infinitebench", type=Path, help="an OpenBMB/InfiniteBench tree (commit 88b3daa)")
    parser.add_argument("--rouge", type=Path, help="evaluate's metrics/rouge folder (offline)")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    fixture = build_fixture(args.flagembedding.resolve(), args.infinitebench.resolve(), args.rouge)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(fixture))
    for preset in ("paper", "official"):
        cases = [c for rows in fixture[preset]["cases"].values() for c in rows]
        cleaned = sum(c["input_ids"] != c["input_ids_clean_up"] for c in cases)
        lengths = sorted(len(c["output_ids"]) for c in cases)
        print(f"{preset}: {len(cases)} cases, {cleaned} where the 4.x clean-up changes the prompt, "
              f"new tokens {lengths}, scores {fixture[preset]['scores']}")


if __name__ == "__main__":
    main()
