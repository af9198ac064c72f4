"""Training data on disk -> encoded records -> a fixed plan of micro-batches per optimizer step."""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import datasets
import torch
from datasets.exceptions import DatasetGenerationError
from tqdm import tqdm
from transformers.trainer_pt_utils import get_length_grouped_indices

from tenfold import records
from tenfold.errors import RecipeError, RecordError, UserError
from tenfold.io import check_jsonl_bytes, read_jsonl, write_jsonl
from tenfold.recipe import Recipe
from tenfold.records import encode_record, record_tokens
from tenfold.toy import TOY_DATA, toy_records

FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "weights": datasets.Sequence(datasets.Value("float32")),
    "length": datasets.Value("int32"),
    "loss_weight": datasets.Value("float32"),  # sum of weights: the record's share of a step's loss
    "status": datasets.Value("string"),  # "ok", "truncated", "skipped: <reason>"
})


def _skipped(record_id: str, reason: str) -> dict:
    return {"id": record_id, "input_ids": [], "weights": [], "length": 0, "loss_weight": 0.0,
            "status": f"skipped: {reason}"}


def _encoded_rows(files: list[str], tokenizer, max_length: int, context_weight: float):
    for file in files:
        try:
            for record in read_jsonl(file):
                try:
                    encoded = encode_record(record, tokenizer, max_length, context_weight)
                except RecordError as e:
                    tqdm.write(f"{file}: {e} (skipped)", file=sys.stderr)  # above datasets' progress bar
                    yield _skipped(str(record.get("id", "?")) if isinstance(record, dict) else "?", "malformed record")
                    continue
                if encoded is None:
                    tqdm.write(f"{file}: record {record.get('id', '?')!r} skipped: {record_tokens(record, tokenizer)} "
                               f"tokens, and cutting its document cannot bring it to data.max_length {max_length} "
                               f"(its questions and answers alone are longer); raise data.max_length or shorten "
                               f"the record", file=sys.stderr)
                    yield _skipped(str(record["id"]), f"longer than {max_length} tokens after truncation")
                    continue
                yield {"id": encoded.id, "input_ids": encoded.input_ids, "weights": encoded.weights,
                       "length": len(encoded.input_ids), "loss_weight": float(sum(encoded.weights)),
                       "status": "truncated" if encoded.truncated else "ok"}
        except RecordError as e:  # a line that is not JSON: the rest of the file cannot be trusted
            raise RecordError(f"{e}; fix or remove that line") from None


def resolve_data_file(name: str, out: Path) -> Path:
    """`tenfold/toy` is the built-in toy world (written to OUT/data/toy.jsonl); anything else is a path."""
    if name == TOY_DATA:
        return write_jsonl(toy_records(256, seed=0), out / "data" / "toy.jsonl")
    return Path(name)


def encode_files(recipe: Recipe, tokenizer, out: Path, held_out: bool = False) -> tuple[datasets.Dataset, dict]:
    """Encode every training file (held_out: every data.eval_files file) once into a memory-mapped Arrow cache;
    returns (usable rows, counts).

    Arrow (via `datasets`) rather than Python lists: 20K records of up to 80K tokens would cost
    gigabytes per process, and every process of a multi-GPU run shares the one mapped file.
    """
    what = "held-out" if held_out else "training"
    files = [str((Path(f) if held_out else resolve_data_file(f, out)).resolve())
             for f in (recipe.data.eval_files if held_out else recipe.data.train_files)]
    if not files:
        raise UserError("no training data: set data.train_files in the recipe or pass --data FILE")
    digests = {}
    for f in files:
        if not Path(f).is_file():
            raise UserError(f"{what} data file {f} not found")
        data = Path(f).read_bytes()
        check_jsonl_bytes(f, data)  # empty, binary, not UTF-8: named here, before datasets' own messages
        digests[f] = hashlib.sha256(data).hexdigest()
    # The fingerprint covers the inputs' bytes, so an edited file is re-encoded.
    key = hashlib.sha256(json.dumps({
        "files": digests,
        "tokenizer": tokenizer.name_or_path, "vocab": len(tokenizer), "template": tokenizer.chat_template,
        "max_length": recipe.data.max_length, "context_weight": recipe.data.context_weight,
        "encoder": hashlib.sha256(Path(records.__file__).read_bytes()).hexdigest(),  # new code, new encoding
    }, sort_keys=True).encode()).hexdigest()[:16]
    try:
        rows = datasets.Dataset.from_generator(
            _encoded_rows, features=FEATURES, cache_dir=str(out / "cache"), fingerprint=key,
            gen_kwargs={"files": files, "tokenizer": tokenizer, "max_length": recipe.data.max_length,
                        "context_weight": recipe.data.context_weight},
        )
    except DatasetGenerationError as e:  # datasets wraps our own errors; show the user ours
        raise e.__cause__ or e from None
    counts = Counter(rows["status"])
    usable = rows.filter(lambda status: not status.startswith("skipped"), input_columns="status")
    if len(usable) == 0:
        raise UserError(f"no usable {what} records in {files}: {dict(counts)}")
    return usable.with_format("torch"), {
        "records": len(rows), "used": len(usable), "truncated": counts.get("truncated", 0),
        "skipped": {k.removeprefix("skipped: "): v for k, v in counts.items() if k.startswith("skipped")},
    }


def batch_plan(lengths: list[int], recipe: Recipe, world_size: int) -> list[list[list[int]]]:
    """plan[step][rank] = that rank's micro-batches (lists of record indices) for one optimizer step.

    Deterministic from the seed, so every process and every resumed run computes the same plan.
    A last step that cannot be filled is dropped.
    """
    t = recipe.train
    per_step = t.batch_size // t.micro_batch_size  # micro-batches per optimizer step, over all processes
    if per_step % world_size:
        raise RecipeError(f"train.batch_size {t.batch_size} / micro_batch_size {t.micro_batch_size} = {per_step} "
                          f"micro-batches per step cannot be split over {world_size} processes")
    plan = []
    for epoch in range(t.epochs):
        generator = torch.Generator().manual_seed(t.seed + epoch)
        if t.group_by_length:
            order = get_length_grouped_indices(lengths, t.micro_batch_size, generator=generator)
        else:
            order = torch.randperm(len(lengths), generator=generator).tolist()
        micro = [order[i:i + t.micro_batch_size] for i in range(0, len(order), t.micro_batch_size)]
        for s in range(len(micro) // per_step):
            step = micro[s * per_step:(s + 1) * per_step]
            plan.append([step[rank::world_size] for rank in range(world_size)])
    if t.max_steps is not None:
        plan = plan[:t.max_steps]
    return plan


def collate(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad one micro-batch; padding carries no loss and no attention."""
    length = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    token_weights = torch.zeros((len(rows), length), dtype=torch.float32)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        input_ids[i, :n] = r["input_ids"]
        attention_mask[i, :n] = 1
        token_weights[i, :n] = r["weights"]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_weights": token_weights}
