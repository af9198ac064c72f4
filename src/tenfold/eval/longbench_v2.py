"""`tenfold eval longbench_v2`: LongBench v2 (503 multiple-choice questions) as THUDM/LongBench's pred.py and
result.py run it (the repository root is v2; LongBench/ holds v1).

For each question: fill the official template (prompts/0shot.txt; 0shot_cot.txt with `cot`;
0shot_no_context.txt with `no_context`) by pred.py's chain of str.replace ($DOC$, $Q$, $C_A$..$C_D$, each
value stripped), cut it in the middle to `truncate_length` tokens as pred.py does (`tokenizer.encode`, so
the BOS counts; the first max_len//2 ids and the last ceil(max_len/2), decoded without special tokens), and
send it as one user turn of the chat template (pred.py's chat completion on a vLLM server). 128 new tokens;
with `cot`, 1024 for the reasoning, then 0shot_cot_ans.txt with the stripped reasoning as $COT$ (cut the
same way) for 128 more. The answer is extract_answer's: "*" removed, then "The correct answer is (X)",
else "The correct answer is X", X in A-D; right when it equals the record's answer.

The breakdown is result.py's: overall, easy/hard, short/medium/long, each round(100 * right / questions, 1);
`compensated` (result.py's switch, off there by default) counts an unanswered question as 0.25.

Where tenfold differs from pred.py, on purpose:
- Decoding is greedy; pred.py samples at temperature 0.1. tenfold's backends are all greedy, which makes
  a run deterministic, so it resumes and compares between models; at 0.1 the sampler is close to greedy,
  but pred.py's own numbers move a little from run to run, so expect agreement within that noise.
- pred.py writes nothing for an empty reply ('' means a failed API call there: it is retried on the next
  run, and result.py's denominators leave it out until it succeeds). A greedy model gives the same ''
  every time, so tenfold counts it as unanswered (wrong) and reports how many (`empty_replies`).
- `truncate_length` defaults to the model's length minus 1152 (1024 CoT tokens, 128 for the chat template
  and the re-tokenized cut), the same with and without CoT; pred.py's config/model2maxlen.json gives
  120000 for its 128K models: pass truncate_length=120000 to compare with the leaderboard's rows.
- pred.py's RAG setting (`--rag`) needs retrieved chunks the dataset does not hold; it is not run.

Each record is pred.py's line (the question's fields, the context's first 1,000 characters, response,
response_cot with `cot`, pred, judge) plus "id", so result.py reads tenfold's <name>.json as is.
The templates belong to LongBench: read from `prompts_dir`, else downloaded once from THUDM/LongBench
(pinned commit) into the cache. The data is LongBench v2's data.json: `data`, else THUDM/LongBench-v2 on
the Hugging Face hub.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tenfold.config import setting
from tenfold.errors import RecordError, UserError
from tenfold.eval.runner import check_length, claim_predictions, describe, resume_cases, write_outputs
from tenfold.io import cache_dir, read_jsonl

COMMIT = "2e00731f8d0bff23dc4325161044d0ed8af94c1e"  # THUDM/LongBench, pred.py and result.py as read
PROMPT_URL = f"https://raw.githubusercontent.com/THUDM/LongBench/{COMMIT}/prompts/{{}}"
DATA_REPO = "THUDM/LongBench-v2"  # a Hugging Face dataset; data.json is the train split
FIELDS = ("_id", "domain", "sub_domain", "difficulty", "length", "question", "choice_A", "choice_B", "choice_C",
          "choice_D", "answer", "context")  # what pred.py keeps of each question
ANSWER_TOKENS, COT_TOKENS = 128, 1024  # pred.py's max_new_tokens
TEMPLATE_ROOM = 128  # tokens the chat template adds, and the cut re-tokenized, beyond truncate_length
DIFFICULTIES, LENGTHS = ("easy", "hard"), ("short", "medium", "long")


# ---------------------------------------------------------------- pred.py

def extract_answer(response: str) -> str | None:
    """pred.py's extract_answer."""
    response = response.replace("*", "")
    match = re.search(r"The correct answer is \(([A-D])\)", response)
    if match:
        return match.group(1)
    match = re.search(r"The correct answer is ([A-D])", response)
    return match.group(1) if match else None


def fill_template(template: str, item: dict, context: str, cot: str | None = None) -> str:
    """pred.py's replace chain, in its order (a value holding a later placeholder gets it filled too)."""
    prompt = template.replace("$DOC$", context.strip()).replace("$Q$", item["question"].strip())
    for letter in "ABCD":
        prompt = prompt.replace(f"$C_{letter}$", item[f"choice_{letter}"].strip())
    return prompt if cot is None else prompt.replace("$COT$", cot)


def truncate_middle(tokenizer, prompt: str, max_len: int) -> str:
    """pred.py's cut: ids with the special tokens; if more than max_len, ids[:max_len//2] + ids[-max_len//2:]
    (Python reads -max_len//2 as (-max_len)//2: an odd max_len keeps one more id at the end)."""
    ids = tokenizer.encode(prompt)
    if len(ids) <= max_len:
        return prompt
    return tokenizer.decode(ids[:max_len // 2] + ids[-max_len // 2:], skip_special_tokens=True)


# ---------------------------------------------------------------- result.py

def breakdown(records: list[dict], compensated: bool = False) -> dict:
    """result.py's row: overall, easy/hard, short/medium/long (percent, 1 decimal; None for no questions)."""
    right = {name: 0.0 for name in ("easy", "hard", "short", "medium", "long")}
    count = dict.fromkeys(right, 0)
    for record in records:
        acc = 0.25 if compensated and record["pred"] is None else int(record["judge"])
        difficulty = "easy" if record["difficulty"] == "easy" else "hard"
        length = record["length"] if record["length"] in ("short", "medium") else "long"
        for name in (difficulty, length):
            right[name] += acc
            count[name] += 1

    def percent(total, n):
        return round(100 * total / n, 1) if n else None

    return {"overall": percent(right["easy"] + right["hard"], len(records)),
            "by_difficulty": {name: percent(right[name], count[name]) for name in DIFFICULTIES},
            "by_length": {name: percent(right[name], count[name]) for name in LENGTHS},
            "questions": {"overall": len(records), **count}}


# ---------------------------------------------------------------- assets

def template_names(cot: bool, no_context: bool) -> dict[str, str]:
    """Which templates a setting reads: pred.py picks no_context over cot for the first pass."""
    first = "0shot_no_context.txt" if no_context else "0shot_cot.txt" if cot else "0shot.txt"
    return {"first": first, **({"answer": "0shot_cot_ans.txt"} if cot else {})}


def load_templates(names: dict[str, str], prompts_dir: str | Path | None = None) -> dict[str, str]:
    """The templates by role, from prompts_dir (LongBench's prompts/) or the cached download."""
    folder = Path(prompts_dir) if prompts_dir else cache_dir() / "longbench_v2" / COMMIT[:12] / "prompts"
    templates = {}
    for role, name in names.items():
        path = folder / name
        if not path.is_file():
            if prompts_dir:
                raise UserError(f"{path} is missing; --prompts-dir must be the prompts/ folder of THUDM/LongBench")
            _download(name, path)
        templates[role] = path.read_text(encoding="utf-8")
        needed = ["$Q$"] + (["$COT$"] if role == "answer" else [])
        if any(mark not in templates[role] for mark in needed):
            raise UserError(f"{path}: lacks {' or '.join(needed)}; use LongBench v2's own prompts/{name}")
    return templates


def _download(name: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(PROMPT_URL.format(name), timeout=30) as reply:
            data = reply.read()
    except OSError as e:
        raise UserError(f"could not download LongBench v2's prompts/{name} ({e}); pass --prompts-dir with the "
                        f"prompts/ folder of a THUDM/LongBench checkout") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(f"{name}.part").write_bytes(data)
    path.with_name(f"{name}.part").rename(path)


def load_data(data: str | Path | None = None) -> tuple[list[dict], str]:
    """The questions (pred.py's fields) and where they came from: data.json (a JSON list, or JSON Lines), a
    folder holding it, or THUDM/LongBench-v2 from the hub."""
    if data is None:
        path, source = _hub_data()
    else:
        path = Path(data) / "data.json" if Path(data).is_dir() else Path(data)
        source = str(data)
        if not path.is_file():
            raise UserError(f"{path} not found; --data must be LongBench v2's data.json or a folder holding it")
    with open(path, encoding="utf-8") as f:
        is_list = f.read(1024).lstrip().startswith("[")
    if is_list:
        with open(path, encoding="utf-8") as f:
            try:
                items = json.load(f)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); use LongBench v2's "
                                  f"own data.json") from None
    else:
        items = list(read_jsonl(path))
    for number, item in enumerate(items, start=1):
        _check_item(path, number, item)
    return [{field: item[field] for field in FIELDS} for item in items], source


def _check_item(path: Path, number: int, item) -> None:
    where = f"{path}, question {number}"
    missing = [field for field in FIELDS if field not in item] if isinstance(item, dict) else list(FIELDS)
    if missing:
        raise RecordError(f"{where}: lacks {', '.join(missing)}; use LongBench v2's own data.json")
    for field, allowed in (("answer", tuple("ABCD")), ("difficulty", DIFFICULTIES), ("length", LENGTHS)):
        if item[field] not in allowed:
            raise RecordError(f"{where}: {field} {item[field]!r} is not one of {', '.join(allowed)}")


def _hub_data() -> tuple[Path, str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        path = Path(hf_hub_download(DATA_REPO, "data.json", repo_type="dataset"))
    except (OSError, HfHubHTTPError) as e:
        raise UserError(f"could not get data.json of {DATA_REPO} from the Hugging Face hub ({type(e).__name__}); "
                        f"pass --data with LongBench v2's data.json") from None
    return path, f"{DATA_REPO}@{path.parent.name}"  # the hub's snapshot folder is named by its commit


# ---------------------------------------------------------------- the run

def predict_batch(backend, items: list[dict], templates: dict[str, str], truncate_length: int,
                  cot: bool) -> list[dict]:
    """pred.py's get_pred for a batch: the first pass, with `cot` the answer pass, then its record per item."""
    cut = [truncate_middle(backend.tokenizer, fill_template(templates["first"], item, item["context"]),
                           truncate_length) for item in items]
    outputs = backend.generate(cut, COT_TOKENS if cot else ANSWER_TOKENS, chat=True)
    reasoning = [None] * len(items)
    if cot:
        reasoning = [output.strip() for output in outputs]
        todo = [i for i, output in enumerate(outputs) if output != ""]  # pred.py asks no answer of an empty reply
        prompts = [truncate_middle(backend.tokenizer, fill_template(templates["answer"], items[i], items[i]["context"],
                                                                    reasoning[i]), truncate_length) for i in todo]
        answers = backend.generate(prompts, ANSWER_TOKENS, chat=True) if todo else []
        outputs = [""] * len(items)
        for i, answer in zip(todo, answers):
            outputs[i] = answer
    records = []
    for item, output, thought in zip(items, outputs, reasoning):
        record = {"id": item["_id"], **item, "context": item["context"][:1000]}
        if cot:
            record["response_cot"] = thought
        response = output.strip()
        pred = extract_answer(response)
        records.append({**record, "response": response, "pred": pred, "judge": pred == item["answer"],
                        "empty_reply": output == ""})
    return records


@dataclass
class Options:
    """`tenfold eval longbench_v2` flags and a suite's longbench_v2: keys, each a keyword argument of
    run_longbench_v2."""
    cot: bool = setting(False, "chain of thought: 1024 tokens of reasoning, then the answer pass (pred.py --cot)")
    no_context: bool = setting(False, "the questions without their documents (pred.py --no_context)")
    truncate_length: int | None = setting(None, "prompt tokens after pred.py's middle cut, BOS counted (default: "
                                                "model length - 1152; the leaderboard used 120000)")
    data: str | None = setting(None, "LongBench v2's data.json, or a folder holding it (default: THUDM/LongBench-v2 "
                                     "from the HF hub)")
    prompts_dir: str | None = setting(None, "the prompts/ folder of THUDM/LongBench (default: download at a pinned "
                                            "commit)")
    limit: int | None = setting(None, "only the first N questions")
    compensated: bool = setting(False, "result.py's compensated score: an unanswered question counts 0.25")


def run_longbench_v2(backend, output_dir: str | Path, cot: bool = False, no_context: bool = False,
                     truncate_length: int | None = None, data: str | Path | None = None,
                     prompts_dir: str | Path | None = None, limit: int | None = None, compensated: bool = False,
                     overwrite: bool = False) -> dict:
    """Answer every question into output_dir (<name>.json, .summary.json, .predictions.jsonl), name
    longbench_v2, with _no_context and/or _cot after it as pred.py names its files.

    truncate_length: pred.py's max_len (prompt tokens after the middle cut, BOS counted); limit: the first N
    questions; compensated: result.py's 0.25 for an unanswered question (scoring only).
    """
    name = "longbench_v2" + ("_no_context" if no_context else "") + ("_cot" if cot else "")
    if backend.tokenizer is None:
        raise UserError(f"{name}: {backend.name} has no tokenizer to cut the context with; pass --tokenizer")
    if truncate_length is None:
        if not backend.max_length or backend.max_length <= COT_TOKENS + TEMPLATE_ROOM:
            raise UserError(f"{name}: pass --truncate-length (the model holds {backend.max_length} tokens)")
        truncate_length = backend.max_length - COT_TOKENS - TEMPLATE_ROOM
    if truncate_length < 1:
        raise UserError(f"{name}: --truncate-length must be a positive number of tokens, not {truncate_length}")
    check_length(backend, name, truncate_length + TEMPLATE_ROOM, COT_TOKENS if cot else ANSWER_TOKENS)
    templates = load_templates(template_names(cot, no_context), prompts_dir)
    items, source = load_data(data)
    items = items[:limit]

    out = Path(output_dir)
    path = out / f"{name}.predictions.jsonl"
    digests = {role: hashlib.sha256(text.encode()).hexdigest() for role, text in templates.items()}
    claim_predictions(backend, path, overwrite=overwrite, settings={
        "truncate_length": truncate_length, "cot": cot, "no_context": no_context, "data": source,
        "templates_sha256": digests})
    cases = [{"id": item["_id"], **item} for item in items]
    records = resume_cases(cases, path, lambda batch: predict_batch(backend, batch, templates, truncate_length, cot),
                           getattr(backend, "batch_size", 8), name, sort_key=lambda case: len(case["context"]))
    row = breakdown(records, compensated)
    summary = {"benchmark": name, "model": describe(backend), "cot": cot, "no_context": no_context,
               "truncate_length": truncate_length, "data": source, "decoding": "greedy (pred.py: temperature 0.1)",
               "compensated": compensated, "scorer": "accuracy %", "score": row["overall"], **row,
               "unanswered": sum(r["pred"] is None for r in records),
               "empty_replies": sum(r["empty_reply"] for r in records)}
    return write_outputs(out, name, records, summary)
