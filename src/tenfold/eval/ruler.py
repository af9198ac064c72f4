"""`tenfold eval ruler`: RULER's synthetic tasks that need no external data (beyond the paper).

Templates, needle sentences, answer prefixes, generation lengths and the string_match_all score
follow NVIDIA/RULER (scripts/data/synthetic/constants.py, niah.py, variable_tracking.py,
common_words_extraction.py). The haystack of each (task, length) is sized by binary search so
that the whole prompt, template and answer prefix included, plus the generated tokens fit the
length, as RULER's prepare.py does. Differences, stated so nobody compares unlike numbers:
keys and words are generated pseudo-words (RULER draws them from wonderwords' lists), the essay
haystack of niah_multikey_1/multivalue/multiquery is the noise text unless `haystack` gives a
text, and vt/cwe run without RULER's one in-context example. Scores are 0..1 (RULER prints x100).
"""

from __future__ import annotations

import random
import string
import uuid
from dataclasses import dataclass
from pathlib import Path

from tenfold.config import setting
from tenfold.eval.metrics import string_match_all
from tenfold.eval.runner import check_length, claim_predictions, describe, mean, run_cases, write_outputs

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NIAH = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. I will quiz you "
        "about the {type_v} afterwards.\n{context}\nWhat are all the special magic {type_v} for {query} mentioned in "
        "the provided text?")
NIAH_PREFIX = " The special magic {type_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
VT = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: "
      "Find all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assigned the value {query}, they are: ")
CWE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that "
       "appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"

# task -> (haystack, key kind, value kind, keys, values, queries); RULER's synthetic.yaml
NIAH_TASKS = {
    "niah_single_1": ("noise", "words", "numbers", 1, 1, 1),
    "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": ("essay", "words", "numbers", 1, 1, 4),
}
TASKS = [*NIAH_TASKS, "vt", "cwe"]
TOKENS_TO_GENERATE = {"niah": 128, "vt": 30, "cwe": 120}
LENGTHS = [4096, 8192, 16384, 32768, 65536, 131072]


def pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))


def draw(kind: str, rng: random.Random) -> str:
    if kind == "words":
        return f"{pseudo_word(rng)}-{pseudo_word(rng)}"
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def niah_sample(task: str, size: int, rng: random.Random, essay: list[str]) -> dict:
    haystack, key_kind, value_kind, n_keys, n_values, n_queries = NIAH_TASKS[task]
    keys = []
    while len(keys) < max(n_keys, n_queries):
        key = draw(key_kind, rng)
        keys += [key] if key not in keys else []
    values = [[draw(value_kind, rng) for _ in range(n_values)] for _ in keys]
    type_v = "numbers" if value_kind == "numbers" else "uuids"
    needles = [NEEDLE.format(type_v=type_v, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    if haystack == "needle":  # every line a distractor needle
        lines = [NEEDLE.format(type_v=type_v, key=draw(key_kind, rng), value=draw(value_kind, rng)) for _ in range(size)]
    elif haystack == "essay" and essay:
        lines = [essay[i % len(essay)] for i in range(size)]
    else:
        lines = [NOISE] * size
    for needle in needles:
        lines.insert(rng.randint(0, len(lines)), needle)
    queries = keys[:n_queries]
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    template, prefix = NIAH, NIAH_PREFIX
    if n_queries * n_values == 1:  # RULER's singular wording
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")
        prefix = prefix.replace("are", "is")
        type_v = type_v[:-1]
    answers = [v for k, vs in zip(keys, values) if k in queries for v in vs]
    return {"prompt": template.format(type_v=type_v, context="\n".join(lines), query=query),
            "answer_prefix": prefix.format(type_v=type_v, query=query), "answers": answers}


def vt_sample(size: int, rng: random.Random, hops: int = 4) -> dict:
    names = set()
    while len(names) < hops + 1:
        names.add("".join(rng.choice(string.ascii_uppercase) for _ in range(5)))
    names = list(names)
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[i + 1]} = VAR {names[i]}" for i in range(hops)]
    lines = [NOISE] * size
    positions = sorted(rng.randint(0, size) for _ in chain)
    for offset, (position, line) in enumerate(zip(positions, chain)):
        lines.insert(position + offset, line)  # in order along the text
    return {"prompt": VT.format(context="\n".join(lines), query=value),
            "answer_prefix": VT_PREFIX.format(num_v=len(names), query=value), "answers": names}


def cwe_sample(size: int, rng: random.Random, common: int = 10, freq_common: int = 30, freq_rare: int = 3) -> dict:
    words = set()
    while len(words) < common + size:
        words.add(pseudo_word(rng))
    words = sorted(words)
    rng.shuffle(words)
    listed = words[:common] * freq_common + words[common:] * freq_rare
    rng.shuffle(listed)
    context = " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed))
    return {"prompt": CWE.format(context=context), "answer_prefix": CWE_PREFIX, "answers": words[:common]}


def make_sample(task: str, size: int, seed: int, essay: list[str]) -> dict:
    rng = random.Random(seed)
    if task in NIAH_TASKS:
        return niah_sample(task, size, rng, essay)
    return vt_sample(size, rng) if task == "vt" else cwe_sample(size, rng)


def fit_size(backend, task: str, length: int, new_tokens: int, essay: list[str]) -> int:
    """The largest haystack size (lines, or rare words for cwe) whose prompt + generation fits `length`."""
    def fits(size: int) -> bool:
        sample = make_sample(task, size, 0, essay)
        return backend.prompt_length(sample["prompt"], answer_prefix=sample["answer_prefix"]) + new_tokens <= length

    low, high = 0, 1
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    if low == 0 and not fits(0):
        raise ValueError(f"ruler: {task} does not fit {length} tokens even without a haystack; use longer lengths")
    return low


@dataclass
class Options:
    """`tenfold eval ruler` flags and a suite's ruler: keys, each a keyword argument of run_ruler."""
    tasks: list[str] | None = setting(None, "comma-separated (default: all of them)")
    lengths: list[int] | None = setting(None, "comma-separated (default: 4096,...,131072)")
    samples: int = setting(20, "samples per task and length")
    seed: int = setting(42, "seed of the samples")
    haystack: str | None = setting(None, "essay text for niah_multikey_1/multivalue/multiquery (default: noise)")


def run_ruler(backend, output_dir: str | Path, tasks: list[str] | None = None, lengths: list[int] | None = None,
              samples: int = 20, seed: int = 42, haystack: str | None = None,
              overwrite: bool = False) -> dict:
    """Each task at each length into output_dir (ruler.json, ruler.predictions.jsonl); returns the summary."""
    tasks, lengths = tasks or TASKS, sorted(lengths or LENGTHS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"ruler: unknown task(s) {', '.join(unknown)}; use {', '.join(TASKS)}")
    check_length(backend, "ruler", max(lengths) - TOKENS_TO_GENERATE["niah"], TOKENS_TO_GENERATE["niah"])
    claim_predictions(backend, Path(output_dir) / "ruler.predictions.jsonl", overwrite=overwrite, settings={
        "seed": seed, "haystack": haystack, "max_new_tokens": TOKENS_TO_GENERATE})
    essay = []
    if haystack:
        from tenfold.eval.haystack import read_haystack
        essay = [s.strip() + "." for s in read_haystack(haystack).split(".") if s.strip()]
    cases = []
    for task in tasks:
        new_tokens = TOKENS_TO_GENERATE["niah" if task in NIAH_TASKS else task]
        for length in lengths:
            size = fit_size(backend, task, length, new_tokens, essay)
            for i in range(samples):
                sample = make_sample(task, size, seed * 100003 + i * 7919 + length, essay)
                cases.append({"id": f"{task}-{length}-{i}", "task": task, "length": length,
                              "max_new_tokens": new_tokens, **sample})

    out = Path(output_dir)
    records = []
    for new_tokens in sorted({c["max_new_tokens"] for c in cases}):  # one generation length per run_cases call
        group = [c for c in cases if c["max_new_tokens"] == new_tokens]
        records += run_cases(backend, group, out / "ruler.predictions.jsonl", new_tokens,
                             lambda case, prediction: {"score": string_match_all(prediction, case["answers"])},
                             desc=f"ruler ({new_tokens} new tokens)")
    order = {c["id"]: i for i, c in enumerate(cases)}
    records.sort(key=lambda r: order[r["id"]])
    table = {task: {str(L): mean(r["score"] for r in records if r["task"] == task and r["length"] == L)
                    for L in lengths} for task in tasks}
    summary = {"benchmark": "ruler", "model": describe(backend), "scorer": "string_match_all", "samples": samples,
               "score": mean(r["score"] for r in records), "by_task_and_length": table,
               "by_length": {str(L): mean(table[t][str(L)] for t in tasks) for L in lengths}}
    return write_outputs(out, "ruler", records, summary)
