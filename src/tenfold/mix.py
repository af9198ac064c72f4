"""`tenfold mix`: synthetic conversations, instruction data and plain text in one shuffled training file.

The paper trained on all 3.5K synthetic conversations + 5K RedPajama documents (language-model
loss) + 12K LongAlpaca instruction records; that is the default count. Per source, a count is `all`,
a number of records, or a fraction of the source (0.5). Sampling and shuffling use one seeded
generator, so the same inputs and seed give the same file.

  synthetic  records from `tenfold synth` (kept as they are)
  instruct   LongAlpaca's {"instruction", "input", "output"} -> a user turn and an assistant turn
             (records that already have "conversations" are kept); task "instruct"
  plain      {"text"} cut to max_length tokens of the tokenizer (RedPajama-style); task "plain"

Sources are JSONL files (indexed by line offset, so records are read only when written), JSON or
Parquet files, hub dataset ids (loaded with `datasets`, from its cache when offline), or `tenfold/toy` (the
shipped toy world). Tokens are the target model's: `tokenizer`, else the recipe's model.name.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tenfold.config import setting
from tenfold.errors import RecipeError, RecordError, UserError
from tenfold.io import binary_file, text_line, warn, write_atomic, write_error
from tenfold.models import load_tokenizer, target_tokenizer
from tenfold.records import record_tokens
from tenfold.toy import TOY_DATA, toy_records

DEFAULT_COUNTS = {"synthetic": "all", "instruct": 12000, "plain": 5000}


def parse_counts(text: str | dict | None) -> dict:
    """'synthetic=all,instruct=12000,plain=0.25' (or a mapping) -> counts per source (missing sources: the
    defaults); each count is all, a record count or a fraction."""
    counts = dict(DEFAULT_COUNTS)
    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        pairs = [part.partition("=")[::2] for part in (text or "").split(",") if part.strip()]
    for name, value in pairs:
        name = str(name).strip()
        if name not in DEFAULT_COUNTS:
            raise RecipeError(f"--counts: unknown source {name!r}; use synthetic, instruct, plain")
        counts[name] = count_value(name, value)
    return counts


def count_value(name: str, value) -> int | float | str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    value = str(value).strip()
    try:
        return "all" if value == "all" else (float(value) if "." in value else int(value))
    except ValueError:
        raise RecipeError(f"--counts {name}={value}: give all, a record count or a fraction like 0.5") from None


@dataclass
class MixSettings:
    """`tenfold mix`: each field is a flag, and a key of a recipe's mix: section."""
    output: str = setting(help="the mixed training file (JSONL); OUTPUT.summary.json beside it")
    synthetic: list[str] = setting([], "JSONL files from `tenfold synth`", nargs="*")
    instruct: list[str] = setting([], "LongAlpaca-style JSONL/Parquet files or hub dataset ids", nargs="*")
    plain: list[str] = setting([], "plain-text JSONL/Parquet files or hub dataset ids", nargs="*")
    counts: dict[str, int | float | str] = setting(
        DEFAULT_COUNTS, "per source: all, a record count, or a fraction like 0.5, e.g. "
        "synthetic=all,instruct=12000,plain=5000 (default: that, the paper's mix)", parse=parse_counts)
    seed: int = setting(42, "seed of the sampling and the shuffle")
    tokenizer: str | None = setting(None, "the target model's: counts tokens and cuts plain text to --max-length "
                                          "(default: the --recipe's model.name, else the one in the --synthetic "
                                          "files' .summary.json; needed otherwise, except on tenfold/toy inputs)")
    max_length: int = setting(81920, "plain text is cut to this many tokens")
    recipe: str | None = setting(None, "YAML recipe whose model.name is the target model (for its tokenizer)")

    def __post_init__(self):
        self.counts = parse_counts(self.counts)


class JsonlRows:
    """A JSONL file's records by index, read from their byte offsets when asked for. A file that is empty,
    binary or not UTF-8 is refused here, naming the line; a line that is not JSON is skipped when read."""

    def __init__(self, path: Path):
        self.path, self.offsets, self.lines = path, [], []
        with open(path, "rb") as f:
            if error := binary_file(path, f.read(8192)):
                raise error
            f.seek(0)
            offset = 0
            for number, line in enumerate(f, start=1):
                if text_line(path, number, line).strip():
                    self.offsets.append(offset)
                    self.lines.append(number)
                offset += len(line)
        if not self.offsets:
            raise RecordError(f"{path}: empty (no records); give a JSONL file with one JSON object per line, "
                              f"or leave it out")

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> dict:
        with open(self.path, "rb") as f:
            f.seek(self.offsets[index])
            line = f.readline()
        try:
            return json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{self.path}, line {self.lines[index]}: not valid JSON ({e.msg}); "
                              f"fix or remove that line") from None


def open_source(name: str, kind: str = "synthetic"):
    """(rows, label): something indexable that yields dicts, and the name records get as their source."""
    if name == TOY_DATA:  # the shipped toy world: its documents as plain text, its conversations otherwise
        return [r for r in toy_records(256, seed=0) if ("text" in r) == (kind == "plain")], "toy"
    path = Path(name)
    if path.is_file() and path.suffix == ".jsonl":
        return JsonlRows(path), path.stem
    if path.exists() and not path.is_file():
        raise UserError(f"{name}: not a .jsonl/.json/.parquet file")
    a_file = path.suffix in (".jsonl", ".json", ".parquet") or name.startswith((".", "/", "~")) or name.count("/") > 1
    if not path.exists() and a_file:  # a hub id is owner/name
        raise UserError(f"no such file: {name}")
    import datasets

    if path.is_file():
        fmt = {".json": "json", ".parquet": "parquet"}.get(path.suffix)
        if fmt is None:
            raise UserError(f"{path}: give .jsonl, .json or .parquet")
        return datasets.load_dataset(fmt, data_files=str(path), split="train"), path.stem
    try:
        return datasets.load_dataset(name, split="train"), name
    except Exception as e:  # offline, or not on the hub: one line, with the fix
        raise UserError(f"dataset {name!r} could not be loaded ({type(e).__name__}); download it while online "
                        f"or give a local .jsonl/.parquet file") from None


def convert(kind: str, record: dict, label: str, index: int, tokenizer, max_length: int) -> dict:
    if not isinstance(record, dict):
        raise RecordError(f"{label}, record {index + 1}: not a JSON object")
    if kind == "synthetic":
        if not isinstance(record.get("conversations"), list):
            raise RecordError(f"{label}, record {index + 1}: no 'conversations'; "
                              f"synthetic files come from tenfold synth")
        return {"id": str(record.get("id", f"{label}-{index}")), "source": record.get("source") or label,
                "task": record.get("task") or "synthetic", "conversations": record["conversations"],
                "meta": record.get("meta") or {}}
    if kind == "instruct":
        if isinstance(record.get("conversations"), list):
            turns = record["conversations"]
        elif isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
            question = record["instruction"].strip()
            if isinstance(record.get("input"), str) and record["input"].strip():
                question += "\n\n" + record["input"].strip()
            turns = [{"role": "user", "content": question}, {"role": "assistant", "content": record["output"].strip()}]
        else:
            raise RecordError(f"{label}, record {index + 1}: neither LongAlpaca's instruction/output nor conversations")
        meta = {k: v for k, v in record.items() if k in ("file", "meta")}
        return {"id": f"instruct-{label}-{index}", "source": label, "task": "instruct", "conversations": turns,
                "meta": meta}
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RecordError(f"{label}, record {index + 1}: no string 'text'")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(encoding["input_ids"]) > max_length:  # cut at a token boundary of the original text
        text = text[:encoding["offset_mapping"][max_length - 1][1]]
    return {"id": f"plain-{label}-{index}", "source": label, "task": "plain", "text": text}


def sample_size(count, available: int) -> int:
    if count == "all":
        return available
    if isinstance(count, float):
        return round(count * available)
    return min(int(count), available)


def synth_tokenizer(synthetic: list[str]) -> str | None:
    """The tokenizer `tenfold synth` counted with, from the SYNTH.summary.json beside its output files."""
    used = {}
    for name in synthetic:
        summary = Path(f"{name}.summary.json")
        if summary.is_file():
            try:
                used[name] = json.loads(summary.read_text()).get("tokenizer")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                continue  # not synth's summary: as if there were none
    names = sorted({tokenizer for tokenizer in used.values() if tokenizer})
    if len(names) > 1:
        raise RecordError(f"the --synthetic files were made with different tokenizers ({', '.join(names)}, in their "
                          f".summary.json); give --tokenizer with the target model's")
    if names:
        warn(f"mix: counting tokens with {names[0]}, the tokenizer {', '.join(used)} was made with "
             f"(its .summary.json); --tokenizer or --recipe chooses another")
    return names[0] if names else None


def mix(settings: MixSettings) -> dict:
    """Write the mixed training file and OUTPUT.summary.json; returns the summary.

    The tokenizer is the target model's: settings.tokenizer, else the recipe's model.name, else the one synth
    recorded beside the synthetic files (see target_tokenizer, synth_tokenizer)."""
    synthetic, instruct, plain, counts = settings.synthetic, settings.instruct, settings.plain, settings.counts
    tokenizer = (settings.tokenizer or (None if settings.recipe else synth_tokenizer(synthetic))
                 or target_tokenizer("mix", settings.recipe, [*synthetic, *instruct, *plain]))
    rng = random.Random(settings.seed)
    tok = load_tokenizer(tokenizer)
    chosen, sources = [], {}
    for kind, names in (("synthetic", synthetic), ("instruct", instruct), ("plain", plain)):
        if not names:
            continue
        refs = []
        for name in names:
            rows, label = open_source(name, kind)
            refs += [(rows, label, i) for i in range(len(rows))]
        n = sample_size(counts[kind], len(refs))
        if isinstance(counts[kind], int) and counts[kind] > len(refs):
            warn(f"mix: {kind}: {counts[kind]} records asked for, {len(refs)} available; taking all")
        chosen += [(kind, ref) for ref in rng.sample(refs, n)]
        sources[kind] = {"inputs": list(names), "available": len(refs), "asked": counts[kind], "records": 0,
                         "tokens": 0, "skipped": 0, "by_source": Counter()}
    rng.shuffle(chosen)
    output = Path(settings.output)
    partial = output.with_name(output.name + ".partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "w") as f:
            for kind, (rows, label, index) in chosen:
                try:
                    record = convert(kind, rows[index], label, index, tok, settings.max_length)
                except RecordError as e:
                    warn(f"mix: {e}; skipped")
                    sources[kind]["skipped"] += 1
                    continue
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                stats = sources[kind]
                stats["records"] += 1
                stats["tokens"] += record_tokens(record, tok)
                stats["by_source"][record["source"]] += 1
        os.replace(partial, output)
    except OSError as e:  # a full disk or no permission on the output; an input file that fails keeps its traceback
        if e.filename is not None and Path(e.filename) not in (partial, output, *output.parents):
            raise
        raise write_error(output, e, "--output") from None
    for stats in sources.values():
        stats["by_source"] = dict(stats["by_source"])
    summary = {"output": str(output), "records": sum(s["records"] for s in sources.values()),
               "tokens": sum(s["tokens"] for s in sources.values()), "seed": settings.seed,
               "tokenizer": tokenizer, "max_length": settings.max_length, "sources": sources}
    write_atomic(Path(str(output) + ".summary.json"), json.dumps(summary, indent=2), "--output")
    return summary
