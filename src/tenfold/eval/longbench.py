"""`tenfold eval longbench`: LongBench v1 (THUDM/LongBench) as its pred.py and eval.py run it.

For each dataset: fill the official per-dataset prompt, cut it in the middle to `max_length` tokens
(the first half plus the last half, counted with the BOS, decoded without special tokens), apply the
chat template except for trec, triviaqa, samsum, lsht, lcc and repobench-p, generate greedily up to
the official per-dataset length, and score with the official metrics (`score`, `score_e`: equal to
LongBench's eval.py on any predictions; see longbench_metrics.py for the rules that make it so).

Two presets, each how its code generates and averages; the preset is part of the predictions' key:
- "official": LongBench's pred.py and the leaderboard: generation stops at the end tokens, except samsum,
  which also stops at the "\\n" token and may not begin with it or an end token (pred.py's min_length);
  category = mean of its datasets, Avg = mean of the categories; prompts cut to 500 below the model's length
  in thousands (pred.py's model2maxlen: 7,500 for an 8K model). For pred.py's prompts token for token,
  evaluate with the template its build_chat gives the model: `--chat-template none` (the prompt as it is,
  for a model it has no branch for) or `longbench-llama2` ([INST]prompt[/INST]); tests/eval/test_longbench.py
  matches this preset with both token for token and prediction for prediction with pred.py's own get_pred
  (scripts/longbench_official_parity_fixture.py). A difference no case there shows: pred.py stops at the
  generation config's end ids, and on samsum (stops and min_length ban) at [the tokenizer's eos, "\\n"] only,
  where tenfold takes every end token of the model (generation.stop_token_ids: the config's, the tokenizer's,
  the template's end of turn); they part only where a model generates an end token the other list lacks
  (Llama-3's <|end_of_text|> on samsum), never for the one-eos Llama-2 models pred.py was written for.
- "paper": FlagEmbedding's eval_longbench.py at the paper's commit (Zhang et al., 2024): it appends the
  "\\n" token to the generation config's eos list in place, so every dataset stops at the first "\\n"
  token (a "\\n\\n" token does not stop it), and forbids those tokens as the first one on 2wikimqa, hotpotqa,
  musique, multifieldqa_en, qasper, narrativeqa and samsum (begin_suppress_tokens); Avg = mean of the 16
  English datasets; prompts cut to 31,500 tokens, or for a model shorter than 32K by the LongBench
  convention (7,500 for an 8K model, as the paper ran Llama-3-8B-Instruct at 8K). For the paper's
  prompts token for token, evaluate with `--chat-template llama-3` (the paper code's template string);
  tests/eval/test_longbench.py matches this preset token for token and prediction for prediction with the
  paper's own process_longbench and generate kwargs (scripts/longbench_paper_parity_fixture.py).

Both reference codes ran transformers 4 (pred.py 4.31.0, the paper's code 4.39.3), whose decode of the cut and
of the new ids cleaned up tokenization spaces (" ." -> ".", " 's" -> "'s") where the tokenizer's config asked
for it or said nothing, byte-level BPE tokenizers such as Llama-3's included; transformers 5 skips that for
them. So tenfold decodes the cut, and cleans the predictions it stores and scores, by that rule
(runner.transformers4_clean_up; `clean_up_spaces`: "tokenizer" as the config says, "yes", "no"; part of the
predictions' key).

The prompt and length configs belong to LongBench: read from `config_dir`, else downloaded once from
THUDM/LongBench on GitHub (pinned commit) into the cache. The data is read from `data_dir`
(`<name>.jsonl` / `<name>_e.jsonl`, the layout of the official data.zip), else from data.zip on the
Hugging Face hub (THUDM/LongBench).
"""

from __future__ import annotations

import json
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tenfold.config import setting
from tenfold.errors import RecipeError, RecordError, UserError
from tenfold.eval.longbench_metrics import DATASET_METRIC
from tenfold.eval.reference import paper_reported
from tenfold.eval.runner import (
    CLEAN_UP_SPACES,
    check_length,
    claim_predictions,
    describe,
    run_cases,
    transformers4_clean_up,
    transformers4_decode,
    write_outputs,
)
from tenfold.generation import GenerationControls
from tenfold.io import cache_dir, read_jsonl

CATEGORIES = {  # the paper's Table 1 (and LongBench's English leaderboard), in its column order
    "Single-Doc QA": ["narrativeqa", "qasper", "multifieldqa_en"],
    "Multi-Doc QA": ["hotpotqa", "2wikimqa", "musique"],
    "Summarization": ["gov_report", "qmsum", "multi_news"],
    "Few-shot": ["trec", "triviaqa", "samsum"],
    "Synthetic": ["passage_count", "passage_retrieval_en"],
    "Code": ["lcc", "repobench-p"],
}
CATEGORIES_ZH = {"Single-Doc QA": ["multifieldqa_zh"], "Multi-Doc QA": ["dureader"], "Summarization": ["vcsum"],
                 "Few-shot": ["lsht"], "Synthetic": ["passage_retrieval_zh"], "Code": ["lcc", "repobench-p"]}
ENGLISH = [name for names in CATEGORIES.values() for name in names]  # the paper's 16 datasets
CHINESE = ["multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh"]
LONGBENCH_E = ["qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa",
               "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p"]
NO_CHAT_TEMPLATE = {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}  # few-shot and code: raw text
FIRST_LINE_ONLY = {"trec", "triviaqa", "samsum", "lsht"}
PRESETS = ("official", "paper")
PAPER_NO_EMPTY_START = {"2wikimqa", "hotpotqa", "musique", "multifieldqa_en", "qasper", "narrativeqa", "samsum"}
PAPER_TRUNCATE_LENGTH = 31_500


def generation_controls(preset: str, dataset: str) -> GenerationControls:
    """How the preset's code generates for a dataset (see the module docstring): where it stops at the "\\n"
    token, and where that token or an end token may not come first."""
    stop_at_newline = preset == "paper" or dataset == "samsum"
    no_empty_start = dataset in PAPER_NO_EMPTY_START if preset == "paper" else dataset == "samsum"
    return GenerationControls(stop_tokens=("\n",) if stop_at_newline else (),
                              suppress_first=("\n",) if no_empty_start else (), suppress_first_end=no_empty_start)


def default_truncate_length(preset: str, model_length: int | None) -> int:
    """The preset's prompt budget: the paper's 31,500, else (or for a model shorter than 32K) LongBench's
    convention, 500 below the model's length in thousands (pred.py's model2maxlen: 3,500 for 4K models, 7,500
    for 8K, 31,500 for 32K)."""
    if not model_length or model_length < 2048:
        raise UserError(f"longbench: pass --truncate-length (the model holds {model_length} tokens)")
    if preset == "paper" and model_length >= 32_000:
        return PAPER_TRUNCATE_LENGTH
    return model_length // 1024 * 1000 - 500

CONFIG_URL = "https://raw.githubusercontent.com/THUDM/LongBench/2e00731f8d0bff23dc4325161044d0ed8af94c1e/LongBench/config/{}"
CONFIG_FILES = ("dataset2prompt.json", "dataset2maxlen.json")
DATA_REPO = "THUDM/LongBench"  # a Hugging Face dataset; data.zip holds data/<name>.jsonl


# ---------------------------------------------------------------- scoring (LongBench's eval.py)

def _sample_score(dataset: str, prediction: str, ground_truths: list[str], all_classes) -> float:
    if dataset in FIRST_LINE_ONLY:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = DATASET_METRIC[dataset]
    score = 0.0
    for ground_truth in ground_truths:
        score = max(score, metric(prediction, ground_truth, all_classes=all_classes))
    return score


def score(dataset: str, predictions: list[str], answers: list[list[str]], all_classes) -> float:
    """LongBench's `scorer`: round(100 * mean over samples of the max over ground truths, 2)."""
    if dataset not in DATASET_METRIC:
        raise ValueError(f"unknown LongBench dataset {dataset!r}; use one of {', '.join(DATASET_METRIC)}")
    total = 0.0
    for prediction, ground_truths in zip(predictions, answers):
        total += _sample_score(dataset, prediction, ground_truths, all_classes)
    return round(100 * total / len(predictions), 2)


def score_e(dataset: str, predictions: list[str], answers: list[list[str]], lengths: list[int], all_classes) -> dict:
    """LongBench's `scorer_e`: the same per bucket of the `length` field (words, or characters for
    Chinese): "0-4k", "4-8k", "8k+". An empty bucket is NaN, as numpy's mean of nothing."""
    if dataset not in DATASET_METRIC:
        raise ValueError(f"unknown LongBench dataset {dataset!r}; use one of {', '.join(DATASET_METRIC)}")
    buckets = {"0-4k": [], "4-8k": [], "8k+": []}
    for prediction, ground_truths, length in zip(predictions, answers, lengths):
        bucket = "0-4k" if length < 4000 else "4-8k" if length < 8000 else "8k+"
        buckets[bucket].append(_sample_score(dataset, prediction, ground_truths, all_classes))
    # As eval.py: numpy's mean (pairwise sum) rounded as a numpy float, which can differ from Python's round.
    return {name: float(round(100 * np.mean(values), 2)) if values else float("nan")
            for name, values in buckets.items()}


def summarize(scores: dict[str, float], preset: str = "official") -> dict:
    """Category averages of Table 1 (and of the Chinese table when Chinese datasets were run), and Avg."""
    if preset not in PRESETS:
        raise ValueError(f"unknown LongBench preset {preset!r}; use one of {', '.join(PRESETS)}")

    def categories(table):
        return {name: round(float(np.mean([scores[d] for d in names if d in scores])), 2)
                for name, names in table.items() if any(d in scores for d in names)}

    english = categories(CATEGORIES)
    result = {"preset": preset, "categories": english}
    if preset == "paper":
        result["avg"] = round(float(np.mean([scores[d] for d in ENGLISH if d in scores])), 2) if english else None
        result["avg_of"] = "English datasets"
    else:
        result["avg"] = round(float(np.mean(list(english.values()))), 2) if english else None
        result["avg_of"] = "categories"
    if any(d in scores for d in CHINESE):
        chinese = categories(CATEGORIES_ZH)
        result["categories_zh"] = chinese
        result["avg_zh"] = round(float(np.mean(list(chinese.values()))), 2)
    return result


# ---------------------------------------------------------------- assets

def load_configs(config_dir: str | Path | None = None) -> tuple[dict[str, str], dict[str, int]]:
    """LongBench's dataset2prompt.json and dataset2maxlen.json, from config_dir or the cached download."""
    folder = Path(config_dir) if config_dir else cache_dir() / "longbench" / "config"
    for name in CONFIG_FILES:
        path = folder / name
        if path.is_file():
            continue
        if config_dir:
            raise UserError(f"{path} is missing; give the folder LongBench/config of THUDM/LongBench")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(CONFIG_URL.format(name), timeout=30) as reply:
                data = reply.read()
            json.loads(data)
            (folder / f"{name}.part").write_bytes(data)
            (folder / f"{name}.part").rename(path)
        except OSError as e:
            raise UserError(f"could not download LongBench's {name} ({e}); pass --config-dir with the "
                            f"folder LongBench/config of a THUDM/LongBench checkout") from None
    return tuple(json.loads((folder / name).read_text()) for name in CONFIG_FILES)


def load_data(dataset: str, data_dir: str | Path | None = None, longbench_e: bool = False) -> list[dict]:
    """The records of one dataset: {"input", "context", "answers", "length", "all_classes", "_id", ...}."""
    name = f"{dataset}_e" if longbench_e else dataset
    if data_dir is None:
        data_dir = _hub_data_dir()
    candidates = [Path(data_dir) / f"{name}.jsonl", Path(data_dir) / "data" / f"{name}.jsonl"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(f"{candidates[0]} not found; --data-dir must hold LongBench's <name>.jsonl files "
                        f"(the official data.zip unpacked)")
    records = list(read_jsonl(path))
    for i, record in enumerate(records):
        missing = {"input", "context", "answers", "length", "all_classes", "_id"} - set(record)
        if missing:
            raise RecordError(f"{path}, record {i + 1}: lacks {', '.join(sorted(missing))}; "
                              f"use LongBench's own JSONL files")
    return records


def _hub_data_dir() -> Path:
    from huggingface_hub import hf_hub_download

    try:
        archive = Path(hf_hub_download(DATA_REPO, "data.zip", repo_type="dataset"))
    except OSError as e:  # offline and not cached, or the hub unreachable (the hub's errors are OSErrors)
        raise UserError(f"could not get data.zip of {DATA_REPO} from the Hugging Face hub ({type(e).__name__}); "
                        f"pass --data-dir with LongBench's <name>.jsonl files (data.zip unpacked)") from None
    target = cache_dir() / "longbench" / "data"
    if not (target / "data").is_dir():
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target)
    return target


# ---------------------------------------------------------------- prediction (LongBench's pred.py)

def truncate_middle(tokenizer, prompt: str, max_length: int, clean_up_spaces: str = "tokenizer") -> str:
    """pred.py's cut: tokens with the BOS; if longer than max_length, the first and the last half, each decoded
    without special tokens as transformers 4 did (runner.transformers4_decode: pred.py ran 4.31.0, the
    paper's code 4.39.3)."""
    ids = tokenizer(prompt, truncation=False)["input_ids"]
    if len(ids) <= max_length:
        return prompt
    half = int(max_length / 2)
    return (transformers4_decode(tokenizer, ids[:half], clean_up_spaces, skip_special_tokens=True)
            + transformers4_decode(tokenizer, ids[-half:], clean_up_spaces, skip_special_tokens=True))


def build_cases(tokenizer, dataset: str, records: list[dict], prompt_format: str, max_length: int,
                clean_up_spaces: str = "tokenizer") -> list[dict]:
    cases = []
    for record in records:
        prompt = truncate_middle(tokenizer, prompt_format.format(**record), max_length, clean_up_spaces)
        cases.append({"id": f"{dataset}/{record['_id']}", "dataset": dataset, "answers": record["answers"],
                      "all_classes": record["all_classes"], "length": record["length"], "prompt": prompt})
    return cases


@dataclass
class Options:
    """`tenfold eval longbench` flags and a suite's longbench: keys, each a keyword argument of run_longbench."""
    datasets: list[str] | None = setting(None, "comma-separated (default: the 16 English)")
    preset: Literal["official", "paper"] = setting(
        "official", "official: LongBench's pred.py, Avg over the 6 categories; paper: the paper code's generation "
                    "(stop at the \\n token on every dataset, no empty start on 7), Avg over the 16 datasets")
    truncate_length: int | None = setting(None, "prompt tokens after the middle cut, BOS counted (default: "
                                                "LongBench's, 7,500 for an 8K model; paper: 31,500 from 32K)")
    longbench_e: bool = setting(False, "LongBench-E: scores per length bucket")
    data_dir: str | None = setting(None, "LongBench's <name>.jsonl files (default: data.zip from the HF hub)")
    config_dir: str | None = setting(None, "LongBench/config with dataset2prompt.json, dataset2maxlen.json "
                                           "(default: download)")
    limit: int | None = setting(None, "only the first N records of each dataset")
    clean_up_spaces: Literal["tokenizer", "yes", "no"] = setting(
        "tokenizer", "the space clean-up (\" .\" -> \".\") transformers 4 applied to the decoded cut and predictions "
                     "(pred.py's 4.31.0, the paper's 4.39.3): as the tokenizer's config says (default), always, never")


def check_datasets(datasets: list[str] | None, longbench_e: bool) -> list[str]:
    """The datasets to run (default: the 16 English, or LongBench-E's 13); an unknown one is refused."""
    datasets = list(datasets or (LONGBENCH_E if longbench_e else ENGLISH))
    allowed = LONGBENCH_E if longbench_e else list(DATASET_METRIC)
    unknown = [d for d in datasets if d not in allowed]
    if unknown:
        raise RecipeError(f"unknown LongBench{'-E' if longbench_e else ''} dataset(s) {', '.join(unknown)}; "
                          f"use some of {', '.join(allowed)}")
    return datasets


def run_longbench(backend, output_dir: str | Path, datasets: list[str] | None = None, preset: str = "official",
                  truncate_length: int | None = None, longbench_e: bool = False, data_dir: str | Path | None = None,
                  config_dir: str | Path | None = None, limit: int | None = None,
                  clean_up_spaces: str = "tokenizer", overwrite: bool = False) -> dict:
    """Generate, score and average into output_dir (longbench.json, .summary.json, .predictions.jsonl).

    truncate_length: prompt tokens after the middle cut, BOS included (pred.py's max_length: 3500 for 4K
    models, 7500 for 8K, 31500 for 32K and in the paper); default: default_truncate_length.
    limit: the first N records of each dataset. clean_up_spaces: see runner.transformers4_clean_up.
    """
    if preset not in PRESETS:
        raise RecipeError(f"unknown LongBench preset {preset!r}; use one of {', '.join(PRESETS)}")
    if clean_up_spaces not in CLEAN_UP_SPACES:
        raise RecipeError(f"longbench: clean_up_spaces {clean_up_spaces!r}; use one of {', '.join(CLEAN_UP_SPACES)}")
    datasets = check_datasets(datasets, longbench_e)
    if backend.tokenizer is None:
        raise UserError(f"longbench: {backend.name} has no tokenizer to truncate with; pass --tokenizer")
    if truncate_length is None:
        truncate_length = default_truncate_length(preset, backend.max_length)
    prompts, max_new_tokens = load_configs(config_dir)
    check_length(backend, "longbench", truncate_length + 64, max(max_new_tokens[d] for d in datasets))  # 64: template

    name = "longbench_e" if longbench_e else "longbench"
    out = Path(output_dir)
    controls = {dataset: generation_controls(preset, dataset) for dataset in datasets}
    claim_predictions(backend, out / f"{name}.predictions.jsonl", overwrite=overwrite, settings={
        "preset": preset, "truncate_length": truncate_length, "data_dir": data_dir, "config_dir": config_dir,
        "controls": controls, "clean_up_spaces": clean_up_spaces})

    def clean_up(prediction: str) -> str:  # as pred.py's (and the paper's) decode of the new ids gave it
        return transformers4_clean_up(backend.tokenizer, prediction, clean_up_spaces)

    records, scores = [], {}
    for dataset in datasets:
        data = load_data(dataset, data_dir, longbench_e)[:limit]
        cases = build_cases(backend.tokenizer, dataset, data, prompts[dataset], truncate_length, clean_up_spaces)

        def score_case(case: dict, prediction: str, dataset=dataset) -> dict:
            return {"score": _sample_score(dataset, prediction, case["answers"], case["all_classes"])}

        done = run_cases(backend, cases, out / f"{name}.predictions.jsonl", max_new_tokens[dataset], score_case,
                         chat=dataset not in NO_CHAT_TEMPLATE, desc=f"longbench {dataset}",
                         controls=controls[dataset], post_process=clean_up)
        scores[dataset] = dataset_score(dataset, done, longbench_e)
        records += done
    summary = longbench_summary(backend, name, preset, truncate_length, scores, longbench_e)
    return write_outputs(out, name, records, summary)


def dataset_score(dataset: str, done: list[dict], longbench_e: bool):
    """eval.py's score of one dataset's records (per length bucket for LongBench-E)."""
    predictions, answers = [r["prediction"] for r in done], [r["answers"] for r in done]
    all_classes = done[-1]["all_classes"] if done else None  # eval.py keeps the last record's
    if longbench_e:
        return score_e(dataset, predictions, answers, [r["length"] for r in done], all_classes)
    return score(dataset, predictions, answers, all_classes)


def longbench_summary(backend, name: str, preset: str, truncate_length: int, scores: dict, longbench_e: bool) -> dict:
    summary = {"benchmark": name, "model": describe(backend), "preset": preset, "truncate_length": truncate_length,
               "scores": scores}
    if longbench_e:  # the table per length bucket; "score": the mean of the bucket averages
        summary["buckets"] = {bucket: summarize({d: s[bucket] for d, s in scores.items() if s[bucket] == s[bucket]},
                                                preset) for bucket in ("0-4k", "4-8k", "8k+")}
        bucket_avgs = [b["avg"] for b in summary["buckets"].values() if b["avg"] is not None]
        summary["score"] = round(float(np.mean(bucket_avgs)), 2) if bucket_avgs else None
    else:
        summary.update(summarize(scores, preset))
        summary["score"] = summary["avg"]
        summary["paper_reported"] = paper_reported(backend.name, "longbench")
    return summary
