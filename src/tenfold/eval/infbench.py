"""`tenfold eval infbench`: InfiniteBench longbook_qa_eng (QA F1) and longbook_sum_eng (summary ROUGE).

Prompts are InfiniteBench's own (OpenBMB/InfiniteBench src/prompt.py, a pinned commit, downloaded once
into the cache or read from `prompts`, never shipped); the default template set is "yarn_mistral",
the one the paper's code (FlagEmbedding eval_infbench.py) uses. The prompt is cut in the middle to its
first and last `truncate_length // 2` tokens (the paper: 80K) and generated greedily with InfiniteBench's
lengths (40 new tokens for QA, 1,200 for summaries). Two presets, each its reference code's:

- "paper" (FlagEmbedding eval_infbench.py + infbench_utils.py): cut counted without special tokens, each
  half decoded on its own, then the chat template (the paper's: `--chat-template llama-3`); summaries
  scored with the `rouge` package's ROUGE-L F (its RecursionError on very long texts scores 0, as in the
  paper's code, which crashes on an empty summary or several references: here 0 and the best reference).
- "official" (InfiniteBench's eval_yarn_mistral.py + compute_scores.py): cut counted with the BOS
  (`tok.encode`), the ids decoded whether cut or not, raw prompt, no chat template; summaries scored
  with ROUGE-Lsum of Google's rouge-score (what its `evaluate.load("rouge")` runs), best over the references.
  It stops only at the tokenizer's eos; tenfold at every end token (the generation config's too).
Both references ran transformers 4.x (4.39.3, 4.35.0), whose decode cleaned up spaces (" ." -> ".") as
the tokenizer's config said, by default yes: the cut prompt and the prediction are decoded so here too
(runner.transformers4_decode), and the prediction is recorded and scored as so decoded.
QA is token F1 after SQuAD normalization, best over the answers, in both. Scores are x100 (the
references' mean, not x100; the paper rounds it to 4 decimals). tests/eval/test_infbench.py checks both
presets against their reference code on a tiny model (scripts/infbench_parity_fixture.py).
"""

from __future__ import annotations

import ast
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tenfold.config import setting
from tenfold.errors import RecipeError, RecordError, UserError
from tenfold.eval.longbench_metrics import _rouge_l, qa_f1_score
from tenfold.eval.reference import paper_reported
from tenfold.eval.runner import (
    check_length,
    claim_predictions,
    describe,
    mean,
    run_cases,
    transformers4_clean_up,
    transformers4_decode,
    write_outputs,
)
from tenfold.io import cache_dir, read_jsonl

TASKS = ("longbook_qa_eng", "longbook_sum_eng")
MAX_NEW_TOKENS = {"longbook_qa_eng": 40, "longbook_sum_eng": 1200}  # InfiniteBench eval_utils.py
PRESETS = {"paper": {"chat": True, "sum_metric": "rouge-l (rouge package)"},
           "official": {"chat": False, "sum_metric": "rougeLsum (rouge-score)"}}
PROMPT_URL = "https://raw.githubusercontent.com/OpenBMB/InfiniteBench/88b3daa6989da2fbe0077170d7a3c84c25d5ae58/src/prompt.py"
DATA_REPO = "xinrongzhang2022/InfiniteBench"  # a Hugging Face dataset with <task>.jsonl


def load_templates(prompts: str | Path | None = None, template_set: str = "yarn_mistral") -> dict[str, str]:
    """`<template_set>_templates` of InfiniteBench's src/prompt.py, read as literals (never executed)."""
    path = Path(prompts) if prompts else cache_dir() / "infbench" / "prompt.py"
    if not path.is_file():
        if prompts:
            raise UserError(f"{path} not found; give InfiniteBench's src/prompt.py")
        try:
            with urllib.request.urlopen(PROMPT_URL, timeout=30) as reply:
                text = reply.read()
        except OSError as e:
            raise UserError(f"could not download InfiniteBench's prompt.py ({e}); pass --prompts with "
                            f"src/prompt.py of an OpenBMB/InfiniteBench checkout") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == f"{template_set}_templates":
            return ast.literal_eval(node.value)
    raise UserError(f"{path}: no {template_set}_templates; use yarn_mistral, gpt4, claude2 or kimi")


def load_data(task: str, data_dir: str | Path | None = None) -> list[dict]:
    if data_dir is None:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(DATA_REPO, f"{task}.jsonl", repo_type="dataset"))
        except OSError as e:  # offline and not cached, or the hub unreachable (the hub's errors are OSErrors)
            raise UserError(f"could not get {task}.jsonl of {DATA_REPO} from the Hugging Face hub "
                            f"({type(e).__name__}); pass --data-dir with InfiniteBench's <task>.jsonl files") from None
    else:
        path = Path(data_dir) / f"{task}.jsonl"
        if not path.is_file():
            raise UserError(f"{path} not found; --data-dir must hold InfiniteBench's <task>.jsonl files")
    records = list(read_jsonl(path))
    for i, record in enumerate(records, start=1):
        if not {"id", "context", "input", "answer"} <= set(record):
            raise RecordError(f"{path}, record {i}: needs id, context, input and answer (InfiniteBench's layout)")
    return records


def truncate_middle(tokenizer, text: str, length: int, preset: str) -> str:
    """The prompt cut to its first and last length // 2 tokens, as the preset's code cuts it.

    paper (process_infbench): counted without special tokens; a cut prompt is its two halves decoded one by
    one and joined, an uncut one is left as it is. official (truncate_by_tokens): counted with the special
    tokens (the BOS); the ids, cut or not, decoded at once."""
    half = length // 2
    if preset == "paper":
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= length:
            return text
        return (transformers4_decode(tokenizer, ids[:half], skip_special_tokens=True)
                + transformers4_decode(tokenizer, ids[-half:], skip_special_tokens=True))
    ids = tokenizer(text)["input_ids"]
    return transformers4_decode(tokenizer, ids if len(ids) <= length else ids[:half] + ids[-half:],
                                skip_special_tokens=True)


def build_cases(tokenizer, task: str, records: list[dict], template: str, truncate_length: int,
                preset: str) -> list[dict]:
    cases = []
    for record in records:
        answers = record["answer"] if isinstance(record["answer"], list) else [record["answer"]]
        prompt = template.format(context=record["context"], question=record["input"], input=record["input"])
        cases.append({"id": f"{task}/{record['id']}", "task": task, "answers": answers,
                      "prompt": truncate_middle(tokenizer, prompt, truncate_length, preset)})
    return cases


def summary_score(prediction: str, references: list[str], preset: str) -> float:
    if preset == "paper":
        try:
            return max(_rouge_l(prediction, reference) for reference in references)
        except Exception:  # FlagEmbedding maps the package's RecursionError to 0 (and crashes on the rest)
            return 0.0
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeLsum"])  # evaluate's rouge: no stemmer, default tokenizer
    return scorer.score_multi(references, prediction)["rougeLsum"].fmeasure


def score(task: str, prediction: str, answers: list[str], preset: str) -> float:
    """One prediction's score on 0-1 (the references' get_score_one)."""
    if task == "longbook_qa_eng":
        return max((qa_f1_score(prediction, answer) for answer in answers), default=0.0)
    return summary_score(prediction, answers, preset)


@dataclass
class Options:
    """`tenfold eval infbench` flags and a suite's infbench: keys, each a keyword argument of run_infbench."""
    tasks: list[str] | None = setting(None, "comma-separated (default: both)")
    preset: Literal["paper", "official"] = setting("paper", "chat template + rouge-L (paper) or raw prompt + "
                                                            "ROUGE-Lsum (official)")
    truncate_length: int = setting(80000, "prompt tokens after the middle cut (the paper's: 80000)")
    template_set: str = setting("yarn_mistral", "InfiniteBench prompt set: yarn_mistral (the paper's), gpt4, "
                                                "claude2")
    prompts: str | None = setting(None, "InfiniteBench's src/prompt.py (default: download)")
    data_dir: str | None = setting(None, "InfiniteBench's <task>.jsonl files (default: the HF hub)")
    limit: int | None = setting(None, "only the first N records of each task")


def run_infbench(backend, output_dir: str | Path, tasks: list[str] | None = None, preset: str = "paper",
                 truncate_length: int = 80000, template_set: str = "yarn_mistral", prompts: str | Path | None = None,
                 data_dir: str | Path | None = None, limit: int | None = None,
                 overwrite: bool = False) -> dict:
    """Generate and score into output_dir (infbench.json, .summary.json, .predictions.jsonl)."""
    if preset not in PRESETS:
        raise RecipeError(f"unknown InfiniteBench preset {preset!r}; use one of {', '.join(PRESETS)}")
    tasks = list(tasks or TASKS)
    if any(t not in TASKS for t in tasks):
        raise RecipeError(f"infbench: unknown task(s) {set(tasks) - set(TASKS)}; use {', '.join(TASKS)}")
    if backend.tokenizer is None:
        raise UserError(f"infbench: {backend.name} has no tokenizer to truncate with; pass --tokenizer")
    check_length(backend, "infbench", truncate_length + 64, max(MAX_NEW_TOKENS[t] for t in tasks))  # 64: template
    templates = load_templates(prompts, template_set)

    out = Path(output_dir)
    claim_predictions(backend, out / "infbench.predictions.jsonl", overwrite=overwrite, settings={
        "preset": preset, "truncate_length": truncate_length, "template_set": template_set,
        "prompts": prompts, "data_dir": data_dir, "decode": "transformers 4.x"})  # transformers4_decode
    def clean_up(prediction: str) -> str:  # as the reference's decode of the new ids gave it
        return transformers4_clean_up(backend.tokenizer, prediction)

    records, scores = [], {}
    for task in tasks:
        cases = build_cases(backend.tokenizer, task, load_data(task, data_dir)[:limit], templates[task],
                            truncate_length, preset)

        def score_case(case: dict, prediction: str) -> dict:
            return {"score": score(case["task"], prediction, case["answers"], preset)}

        done = run_cases(backend, cases, out / "infbench.predictions.jsonl", MAX_NEW_TOKENS[task], score_case,
                         chat=PRESETS[preset]["chat"], desc=f"infbench {task}", post_process=clean_up)
        scores[task] = 100 * mean(r["score"] for r in done)
        records += done
    summary = {"benchmark": "infbench", "model": describe(backend), "preset": preset, "template_set": template_set,
               "truncate_length": truncate_length, "summary_metric": PRESETS[preset]["sum_metric"], "scores": scores,
               "score": mean(scores.values()), "paper_reported": paper_reported(backend.name, "infbench")}
    return write_outputs(out, "infbench", records, summary)
