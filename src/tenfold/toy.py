"""A toy world of long documents with facts in them, and the records tenfold trains on.

The tiny CPU recipe and the tests train on these: plain documents (language-model loss) and
long conversations whose first user turn holds a document and a question about a fact hidden
somewhere in it, with one more user/assistant turn per further question (DESIGN.md's formats).
Everything is drawn from a seeded random generator, so the same seed gives the same records.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = ["red", "blue", "green", "gold", "grey", "white", "black", "brown"]
ANIMALS = ["fox", "owl", "cat", "dog", "hen", "bee", "elk", "yak"]
VERBS = ["paints", "finds", "moves", "opens", "counts", "carries", "mends", "hides"]
OBJECTS = ["door", "gate", "box", "lamp", "bell", "boat", "cup", "key"]
NUMBERS = ["one", "two", "three", "four", "five", "six"]
NAMES = ["anna", "boris", "clara", "david", "elena", "felix", "greta", "hugo", "iris", "jonas"]


def diary_line(day: int, rng: random.Random) -> str:
    count = rng.randrange(len(NUMBERS))
    obj = rng.choice(OBJECTS) + ("s" if count > 0 else "")
    return (f"day {day % 100} : the {rng.choice(COLOURS)} {rng.choice(ANIMALS)} {rng.choice(VERBS)} "
            f"{NUMBERS[count]} {rng.choice(COLOURS)} {obj} .")


def document(n_lines: int, rng: random.Random) -> list[str]:
    start = rng.randrange(100)
    return [diary_line(start + i, rng) for i in range(n_lines)]


def plain_record(index: int, n_lines: int, rng: random.Random) -> dict:
    return {"id": f"toy-plain-{index}", "source": "toy", "text": "\n".join(document(n_lines, rng))}


def conversation_record(index: int, n_lines: int, n_facts: int, rng: random.Random) -> dict:
    lines = document(n_lines, rng)
    names = rng.sample(NAMES, n_facts)
    facts = {name: rng.randrange(10, 100) for name in names}
    for name in names:
        lines.insert(rng.randrange(len(lines) + 1), f"the number of {name} is {facts[name]} .")
    turns = []
    for i, name in enumerate(names):
        question = f"what is the number of {name} ?"
        turns.append({"role": "user", "content": "\n".join(lines) + "\n\n" + question if i == 0 else question})
        turns.append({"role": "assistant", "content": str(facts[name])})
    return {"id": f"toy-chat-{index}", "source": "toy", "task": "multi_detail_qa", "conversations": turns,
            "meta": {"facts": facts}}


def toy_records(n: int, seed: int = 0, min_lines: int = 8, max_lines: int = 64, max_facts: int = 3) -> list[dict]:
    """n records, alternating long conversations and plain documents."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        n_lines = rng.randint(min_lines, max_lines)
        if i % 2 == 0:
            records.append(conversation_record(i, n_lines, rng.randint(1, max_facts), rng))
        else:
            records.append(plain_record(i, n_lines, rng))
    return records


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path
