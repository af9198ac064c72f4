"""The demo's toy world: diary documents holding facts, the questions asked about them, and its tokenizer.

Documents are lines of `tenfold.toy` ("day 37 : the red fox paints two gold doors ."): the
day rises by one a line and the plural agrees with the count, so the next word depends on what came
before and on position. Facts are "the number of anna is 42 ." -- the sentence shape that
`tenfold synth`'s offline generator turns into "what is the number of anna ?" / "42". A question
record is the pipeline's own conversation format (context, blank line, question in the first user
turn; one more turn per further question), rendered with Llama-3's chat template. The day numbers
are the needle test's distractors: the answer is one two-digit number among hundreds.
"""

from __future__ import annotations

import random
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from tenfold.synth.extractive import extract
from tenfold.toy import NAMES, build_tokenizer, document

LINE_TOKENS = 12  # tokens of one diary line with its newline, in the world's tokenizer (checked by the tests)


def fact_sentence(name: str, value: int) -> str:
    return f"the number of {name} is {value} ."


def question(name: str) -> str:
    return f"what is the number of {name} ?"


def place_facts(lines: list[str], facts: dict[str, int], rng: random.Random, edge_prob: float = 0.0,
                depths: list[float] | None = None) -> list[str]:
    """The lines with each fact inserted between two of them: at the given depths (0..1), else at
    random, with probability `edge_prob` at the very start (where attention at depth 0 is weakest)."""
    lines = list(lines)
    for k, (name, value) in enumerate(facts.items()):
        if depths is not None:
            at = round(depths[k] * len(lines))
        elif rng.random() < edge_prob:
            at = rng.randrange(min(2, len(lines) + 1))
        else:
            at = rng.randrange(len(lines) + 1)
        lines.insert(at, fact_sentence(name, value))
    return lines


def question_record(n_lines: int, n_facts: int, n_questions: int, rng: random.Random, edge_prob: float = 0.0,
                    record_id: str = "toy-q") -> dict:
    """A conversation about a document with n_facts facts; n_questions of them asked, one a turn."""
    names = rng.sample(NAMES, n_facts)
    facts = {name: rng.randrange(10, 100) for name in names}
    lines = place_facts(document(n_lines, rng), facts, rng, edge_prob)
    turns = []
    for i, name in enumerate(rng.sample(names, min(n_questions, n_facts))):
        turns.append({"role": "user", "content": "\n".join(lines) + "\n\n" + question(name) if i == 0 else question(name)})
        turns.append({"role": "assistant", "content": str(facts[name])})
    return {"id": record_id, "source": "toy", "task": "toy_qa", "conversations": turns, "meta": {"facts": facts}}


def plain_record(n_lines: int, rng: random.Random, n_facts: int = 0, record_id: str = "toy-doc") -> dict:
    facts = {name: rng.randrange(10, 100) for name in rng.sample(NAMES, n_facts)}
    return {"id": record_id, "source": "toy", "text": "\n".join(place_facts(document(n_lines, rng), facts, rng))}


def prompt_tokens(tokenizer, prompt: str) -> int:
    """Tokens the model reads for a one-turn prompt, chat template and generation header included."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def needle_case(tokenizer, length: int, depth: float, rng: random.Random, case_id: str) -> dict:
    """One needle prompt: a diary with one fact at `depth` percent, then its question, in at most `length`
    tokens with the chat template; the answer is the fact's number (scored by exact match)."""
    name, value = rng.choice(NAMES), rng.randrange(10, 100)
    overhead = prompt_tokens(tokenizer, fact_sentence(name, value) + "\n\n" + question(name))
    n_lines = max(1, (length - overhead) // LINE_TOKENS)
    while True:
        lines = place_facts(document(n_lines, rng), {name: value}, rng, depths=[depth / 100])
        prompt = "\n".join(lines) + "\n\n" + question(name)
        used = prompt_tokens(tokenizer, prompt)
        if used <= length or n_lines == 1:
            return {"id": case_id, "length": length, "depth": depth, "prompt": prompt, "answer": str(value),
                    "tokens": used}
        n_lines -= 1 + (used - length) // LINE_TOKENS


def synth_corpus(directory: str | Path, n_documents: int, min_lines: int, max_lines: int, min_facts: int,
                 max_facts: int, seed: int) -> Path:
    """Long toy documents as .txt files: the corpus `tenfold synth` reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n_documents):
        record = plain_record(rng.randint(min_lines, max_lines), rng, rng.randint(min_facts, max_facts))
        (directory / f"doc-{i:05d}.txt").write_text(record["text"] + "\n")
    return directory


def tokenizer_texts(seed: int = 1234) -> list[str]:
    """What the tokenizer learns from: rendered question records (template, answers), plain documents,
    and the offline generator's questions and answers about toy documents (single and multi detail)."""
    rng, texts = random.Random(seed), []
    for i in range(300):
        record = question_record(rng.randint(4, 30), rng.randint(1, 4), 3, rng)
        texts.append(render_plain(record["conversations"]))
        text = plain_record(rng.randint(10, 40), rng, n_facts=4)["text"]
        texts.append(text)
        for task in ("single_detail", "multi_detail"):
            texts.append(extract(task, [text], 4))
    return texts


def render_plain(turns: list[dict]) -> str:
    """Turns written as the chat template writes them, without the special tokens (which BPE never merges)."""
    return "".join(f"{t['role']}\n\n{t['content'].strip()}" for t in turns)


def world_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """`tiny.build_tokenizer` trained on the toy world: every word of the world, and every two-digit number both
    after a space (in documents) and alone (an answer), is one token."""
    numbers = [" ".join(f"{n}" for n in range(100))] * 20 + ["\n\n".join(f"{n}" for n in range(100))] * 20
    return build_tokenizer(tokenizer_texts() + numbers, vocab_size)
