"""`tenfold eval topic`: LongChat topic retrieval ("what is the first topic we discussed?").

A record of N conversations, each opened by "I would like to discuss the topic of <TOPIC>", then
the question; accuracy per N, as the paper's eval_topic.py scores it: the first topic, lowercased,
is a substring of the lowercased answer (a topic ending in "." fails if the model drops the period,
as in the paper). Data: LongChat's testcases (a directory of `<N>_topics.jsonl` with "prompt" and
"topics"), the paper's `topic_retrieval.json` (records with "context", "question", "topics",
"num_topics"), or, offline, conversations generated here from a fixed seed (not comparable to
published numbers, which used ChatGPT-written conversations).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tenfold.config import setting
from tenfold.errors import RecordError, UserError
from tenfold.eval.plots import line_plot
from tenfold.eval.runner import check_length, claim_predictions, describe, mean, run_cases, write_outputs
from tenfold.io import read_jsonl

NUM_TOPICS = [5, 10, 15, 20, 25, 30, 40, 50, 60, 70]  # the paper's groups
QUESTION = (" Now the record ends. What is the first topic we discussed? Only give me the topic name. "
            "Do not summarize yourself.")
INTRO = ("Below is a record of our previous conversation on {n} different topics. You are the ASSISTANT, and I am the "
         "USER. At the beginning of each topic, the USER will say 'I would like to discuss the topic of <TOPIC>'. "
         "Memorize each <TOPIC>. At the end of the record, I will ask you to retrieve the first topic. "
         "Now the record start. ")
ASPECTS = ["the history", "the economics", "the science", "the future", "the art", "the ethics", "the geography",
           "the engineering"]
SUBJECTS = ["coffee", "bridges", "volcanoes", "chess", "jazz", "honeybees", "glaciers", "lighthouses", "origami",
            "submarines", "typography", "tea", "comets", "railways", "coral reefs", "violins"]
FACTS = ["Many people find {s} fascinating because of {a}.", "Experts on {s} often disagree about {a}.",
         "Books on {a} of {s} fill whole library shelves.", "Students of {s} usually begin with {a}.",
         "There are old stories about {s} that touch on {a}.", "New research keeps changing what we know about {s}."]


def topic_conversation(topic: str, aspect: str, subject: str, turns: int, rng: random.Random) -> str:
    lines = [f"USER: I would like to discuss the topic of {topic}."]
    for _ in range(turns):
        lines.append("ASSISTANT: " + " ".join(rng.choice(FACTS).format(s=subject, a=aspect) for _ in range(3)))
        lines.append(f"USER: Tell me more about {subject}.")
    lines.append("ASSISTANT: Gladly. " + rng.choice(FACTS).format(s=subject, a=aspect))
    lines.append("USER: Great, let's talk about the next topic.")
    return "\n".join(lines)


def generated_cases(num_topics: list[int], samples: int, turns: int = 2, seed: int = 0) -> list[dict]:
    """Offline LongChat-style records: topics drawn without replacement, the first one is the answer."""
    rng = random.Random(seed)
    pairs = [(a, s) for a in ASPECTS for s in SUBJECTS]
    if max(num_topics) > len(pairs):
        raise UserError(f"topic: the built-in generator has {len(pairs)} topics; ask for at most that many")
    cases = []
    for n in num_topics:
        for i in range(samples):
            chosen = rng.sample(pairs, n)
            topics = [f"{a} of {s}" for a, s in chosen]
            record = " ".join(topic_conversation(t, a, s, turns, rng) for t, (a, s) in zip(topics, chosen))
            cases.append({"id": f"N{n}-{i}", "num_topics": n, "target": topics[0],
                          "prompt": INTRO.format(n=n) + record + QUESTION})
    return cases


def file_cases(path: str | Path, num_topics: list[int] | None) -> list[dict]:
    """Records from LongChat's testcases directory or file(s), or the paper's topic_retrieval.json."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*_topics.jsonl"), key=lambda f: int(f.name.split("_")[0]))
        if not files:
            raise UserError(f"{path} holds no LongChat testcases (<N>_topics.jsonl)")
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"topic data {path} not found; pass LongChat's testcases directory or a JSON/JSONL file")
    cases = []
    for file in files:
        text = file.read_text()
        records = json.loads(text) if text.lstrip().startswith("[") else list(read_jsonl(file))
        for i, record in enumerate(records):
            if "topics" not in record or not ("prompt" in record or "context" in record):
                raise RecordError(f"{file}, record {i + 1}: needs 'topics' and 'prompt' (LongChat) or 'context' and "
                                  f"'question' (topic_retrieval.json)")
            prompt = record["prompt"] if "prompt" in record else " ".join(
                [record["context"], record.get("question", QUESTION.strip())])
            n = int(record.get("num_topics", len(record["topics"])))
            cases.append({"id": f"{file.stem}-{record.get('test_id', i)}", "num_topics": n,
                          "target": record["topics"][0], "prompt": prompt})
    return [c for c in cases if num_topics is None or c["num_topics"] in num_topics]


@dataclass
class Options:
    """`tenfold eval topic` flags and a suite's topic: keys, each a keyword argument of run_topic."""
    data: str | None = setting(None, "LongChat testcases dir or topic_retrieval.json (default: generated "
                                     "conversations)")
    num_topics: list[int] | None = setting(None, "comma-separated groups (default: 5,10,...,70)")
    samples: int = setting(10, "generated records per group")
    turns: int = setting(2, "turns per generated conversation")
    seed: int = setting(0, "seed of the generated conversations")
    max_new_tokens: int = setting(50, "tokens a prediction may have")


def run_topic(backend, output_dir: str | Path, data: str | Path | None = None, num_topics: list[int] | None = None,
              samples: int = 10, turns: int = 2, seed: int = 0, max_new_tokens: int = 50,
              overwrite: bool = False) -> dict:
    """Accuracy per number of topics into output_dir (topic.json, topic.png); returns the summary."""
    cases = file_cases(data, num_topics) if data else generated_cases(num_topics or NUM_TOPICS, samples, turns, seed)
    if not cases:
        raise UserError(f"topic: no records with {num_topics} topics in {data}")
    longest = max(cases, key=lambda c: len(c["prompt"]))
    check_length(backend, "topic", backend.prompt_length(longest["prompt"]), max_new_tokens)

    def score(case: dict, prediction: str) -> dict:
        return {"score": float(case["target"].lower() in prediction.lower())}

    out = Path(output_dir)
    claim_predictions(backend, out / "topic.predictions.jsonl", overwrite=overwrite, settings={
        "data": str(data) if data else None, "turns": turns, "seed": seed, "max_new_tokens": max_new_tokens})
    records = run_cases(backend, cases, out / "topic.predictions.jsonl", max_new_tokens, score, desc="topic")
    groups = sorted({r["num_topics"] for r in records})
    accuracy = {n: mean(r["score"] for r in records if r["num_topics"] == n) for n in groups}
    line_plot({backend.name: accuracy}, out / "topic.png", "Topic retrieval (first topic)", "Number of topics")
    summary = {"benchmark": "topic", "model": describe(backend), "scorer": "substring-accuracy",
               "data": str(data or "generated"), "score": mean(accuracy.values()),
               "by_num_topics": {str(n): a for n, a in accuracy.items()}}
    return write_outputs(out, "topic", records, summary)
