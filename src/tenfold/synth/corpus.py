"""Read a corpus of long documents as a stream, filter it, and cut documents into token chunks.

A corpus is a folder of .txt/.md files (one document each; .jsonl and .parquet files inside it are
read too), a JSONL file with a text field, a Parquet file, a dataset saved with `datasets`'
`save_to_disk`, or a Hugging Face hub id (streamed). Documents are yielded one at a time, so a
corpus larger than memory works. A bad file or line (empty, binary, not UTF-8, not JSON, no text)
gets a one-line message naming it and is skipped and counted in `skipped`, a Counter of reasons.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tenfold.errors import UserError
from tenfold.io import warn

TEXT_SUFFIXES = {".txt", ".md"}
CountTokens = Callable[[str], int]


@dataclass
class Document:
    id: str  # sha256 of the text: equal texts have equal ids
    text: str
    source: str  # the corpus' name (folder, file stem or dataset id)
    origin: str  # where exactly it came from: "books/a.txt", "papers.jsonl:12"


@dataclass
class Chunk:
    text: str
    start: int  # character offsets into the document; consecutive chunks tile it exactly
    end: int


def text_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _document(text: str, source: str, origin: str) -> Document:
    return Document(text_id(text), text, source, origin)


def _read_text_file(path: Path, source: str, skipped: Counter) -> Iterator[Document]:
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        skipped["binary_file"] += 1
        warn(f"corpus: {path}: binary file, skipped; give text files (UTF-8)")
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        skipped["not_utf8"] += 1
        warn(f"corpus: {path}: not UTF-8 (byte {e.start}), skipped; re-encode it as UTF-8")
        return
    if not text.strip():
        skipped["empty_file"] += 1
        warn(f"corpus: {path}: empty, skipped")
        return
    yield _document(text, source, str(path))


def _read_jsonl(path: Path, source: str, text_field: str, skipped: Counter) -> Iterator[Document]:
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            where = f"{path}:{line_number}"
            if b"\x00" in raw:
                skipped["binary_file"] += 1
                warn(f"corpus: {path}: binary file, skipped from line {line_number}; give UTF-8 JSONL")
                return
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                skipped["not_utf8"] += 1
                warn(f"corpus: {where}: not UTF-8, line skipped; re-encode the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                skipped["bad_json_line"] += 1
                warn(f"corpus: {where}: not valid JSON ({e.msg}), line skipped; each line must be one JSON object")
                continue
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                skipped["no_text_field"] += 1
                warn(f"corpus: {where}: no non-empty string field {text_field!r}, skipped; set --text-field")
                continue
            yield _document(text, source, where)


def _read_parquet(path: Path, source: str, text_field: str, skipped: Counter) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(columns=[text_field], batch_size=64)
        row = 0
        for batch in batches:
            for text in batch.column(0).to_pylist():
                row += 1
                if isinstance(text, str) and text.strip():
                    yield _document(text, source, f"{path}:{row}")
                else:
                    skipped["no_text_field"] += 1
    except Exception as e:  # pyarrow raises several types for a corrupt or column-less file
        skipped["bad_parquet"] += 1
        warn(f"corpus: {path}: cannot read as Parquet with a {text_field!r} column ({type(e).__name__}), skipped")


def _read_file(path: Path, source: str, text_field: str, skipped: Counter) -> Iterator[Document]:
    if path.stat().st_size == 0:
        skipped["empty_file"] += 1
        warn(f"corpus: {path}: empty, skipped")
        return
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        yield from _read_text_file(path, source, skipped)
    elif suffix in (".jsonl", ".json"):
        yield from _read_jsonl(path, source, text_field, skipped)
    elif suffix == ".parquet":
        yield from _read_parquet(path, source, text_field, skipped)
    else:
        skipped["unsupported_file"] += 1
        warn(f"corpus: {path}: not .txt/.md/.jsonl/.parquet, skipped")


def read_corpus(path: str | Path, skipped: Counter, text_field: str = "text") -> Iterator[Document]:
    """Yield the corpus' documents one at a time; see the module docstring for what a corpus is."""
    location = Path(path)
    if location.is_file():
        yield from _read_file(location, location.stem, text_field, skipped)
    elif location.is_dir() and ((location / "dataset_info.json").exists() or (location / "state.json").exists()):
        import datasets

        dataset = datasets.load_from_disk(str(location))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
        yield from _dataset_documents(dataset, location.name, text_field, skipped)
    elif location.is_dir():
        for file in sorted(p for p in location.rglob("*") if p.is_file() and not p.name.startswith(".")):
            yield from _read_file(file, location.name, text_field, skipped)
    elif "/" in str(path) and not str(path).startswith((".", "/")):
        import datasets

        dataset = datasets.load_dataset(str(path), split="train", streaming=True)
        yield from _dataset_documents(dataset, str(path), text_field, skipped)
    else:
        raise UserError(f"corpus {path} not found; give a folder, a .jsonl/.parquet file, a saved "
                        f"dataset folder or a hub dataset id")


def _dataset_documents(dataset: Iterable[dict], source: str, text_field: str, skipped: Counter) -> Iterator[Document]:
    for row, example in enumerate(dataset):
        text = example.get(text_field)
        if isinstance(text, str) and text.strip():
            yield _document(text, source, f"{source}:{row}")
        else:
            skipped["no_text_field"] += 1


def detect_language(text: str) -> str:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0  # langdetect is random unless seeded
    try:
        return detect(text[:4000])
    except LangDetectException:
        return "unknown"


def filter_documents(documents: Iterable[Document], count_tokens: CountTokens, min_tokens: int, max_tokens: int,
                     skipped: Counter, language: str | None = None,
                     too_short: Callable[[Document, int], None] | None = None) -> Iterator[tuple[Document, int]]:
    """Yield (document, token count) for documents within [min_tokens, max_tokens], each text once.

    Documents below min_tokens go to `too_short` (the heterogeneous task concatenates such texts).
    """
    seen: set[str] = set()
    for document in documents:
        if document.id in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(document.id)
        n_tokens = count_tokens(document.text)
        if language and detect_language(document.text) != language:
            skipped["language"] += 1
        elif n_tokens < min_tokens:
            skipped["too_short"] += 1
            if too_short is not None:
                too_short(document, n_tokens)
        elif n_tokens > max_tokens:
            skipped["too_long"] += 1
        else:
            yield document, n_tokens


def _split(text: str, start: int, end: int, pattern: str) -> list[tuple[int, int]]:
    """Spans of text[start:end] cut after each match of `pattern`; the separators stay attached."""
    spans, position = [], start
    for match in re.compile(pattern).finditer(text, start, end):
        if match.end() > position and match.end() < end:
            spans.append((position, match.end()))
            position = match.end()
    spans.append((position, end))
    return spans


LEVELS = [r"\n[ \t]*\n\s*", r"(?<=[.!?])\s+", r"\s+"]  # paragraphs, sentences, words


def _pieces(text: str, start: int, end: int, count_tokens: CountTokens, max_tokens: int, level: int = 0):
    """(start, end, tokens) spans of at most max_tokens, cut at the coarsest boundary that works."""
    n = count_tokens(text[start:end])
    if n <= max_tokens or level == len(LEVELS):  # a single word longer than a chunk stays whole
        yield start, end, n
        return
    for a, b in _split(text, start, end, LEVELS[level]):
        yield from _pieces(text, a, b, count_tokens, max_tokens, level + 1)


def chunk_text(text: str, count_tokens: CountTokens, max_tokens: int = 4096) -> list[Chunk]:
    """Cut text into consecutive chunks of at most max_tokens tokens at paragraph, else sentence, else
    word boundaries, never inside a word (the paper used semantic-text-splitter at 4096 GPT-4 tokens;
    this counts the target model's tokens, with any tokenizer)."""
    chunks: list[Chunk] = []
    pending = deque(_pieces(text, 0, len(text), count_tokens, max_tokens))
    current: list[tuple[int, int, int]] = []
    while pending or current:
        if pending and (not current or sum(n for _, _, n in current) + pending[0][2] <= max_tokens):
            current.append(pending.popleft())
            continue
        # token counts of pieces do not quite add up (a tokenizer may merge or split across the seam)
        while len(current) > 1 and count_tokens(text[current[0][0]:current[-1][1]]) > max_tokens:
            pending.appendleft(current.pop())
        a, b = current[0][0], current[-1][1]
        chunks.append(Chunk(text[a:b], a, b))
        current = []
    return chunks
