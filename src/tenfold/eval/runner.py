"""What every benchmark shares: the length check, resumable predictions, batched generation, outputs.

A benchmark builds its cases (each a dict with a unique "id", a "prompt" and whatever its scorer
needs), then `run_cases` generates the unfinished ones a batch at a time, scores them, and appends
each finished case to `<name>.predictions.jsonl` as soon as it is done, so a killed run started
again re-runs no finished case. Cases of similar length are batched together (left padding), which
is what makes a needle grid several times faster than one generate call per cell.

Resuming is keyed: `claim_predictions` stores what makes the predictions (the backend's identity and
the benchmark's settings) in `<name>.key.json` beside them, and refuses a folder whose predictions
were made otherwise, unless told to discard them (`overwrite=True`, `--overwrite`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm


def check_length(backend, benchmark: str, longest_prompt: int, max_new_tokens: int) -> None:
    """Refuse, before any work, a length the model cannot hold."""
    need = longest_prompt + max_new_tokens
    if backend.max_length is not None and need > backend.max_length:
        raise ValueError(
            f"{benchmark}: a {longest_prompt}-token prompt plus {max_new_tokens} new tokens exceeds what "
            f"{backend.name} holds ({backend.max_length} tokens); drop the longer lengths, or pass "
            f"--max-length {need} to run past the model's configured length anyway (to see where it fails)")
    estimate = getattr(backend, "generation_bytes", None)
    if estimate is not None:
        needed, free = estimate(need), backend.free_bytes()
        if needed > free:
            raise ValueError(
                f"{benchmark}: generating from {need} tokens needs about {needed / 2**30:.1f} GiB (KV cache and "
                f"activations of one batch) but {free / 2**30:.1f} GiB are free on {backend.device}; drop the "
                f"longer lengths or lower --batch-size")


def load_finished(path: Path) -> dict[str, dict]:
    """Finished cases by id. A last line cut short by a kill is dropped from the file."""
    if not path.is_file():
        return {}
    finished, good_bytes = {}, 0
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if line.endswith(b"\n"):
                    raise ValueError(f"{path}: a line in the middle is not JSON; delete the file to start over") from None
                break
            finished[record["id"]] = record
            good_bytes += len(line)
    if good_bytes < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return finished


def model_lengths(backend, training_length: int | None = None) -> dict:
    """The model's native length and the length tenfold trained it at (None where not known: a model behind
    an API, or one tenfold did not train); `training_length` given by the user wins."""
    from tenfold.rope import model_lengths as config_lengths

    config = getattr(getattr(backend, "model", None), "config", None)
    lengths = config_lengths(config) if config is not None else {"native_length": None, "training_length": None}
    return {**lengths, **({"training_length": training_length} if training_length else {})}


def describe(backend, training_length: int | None = None) -> dict:
    """What a report says about the model: the backend's own description and the model's lengths."""
    return {**backend.describe(), **model_lengths(backend, training_length)}


def backend_identity(backend) -> dict:
    """What identifies a backend's predictions: `Backend.identity()`, or a stand-in's type and name."""
    identity = getattr(backend, "identity", None)
    return identity() if callable(identity) else {"kind": type(backend).__name__, "model": backend.name}


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def key_differences(old: dict, new: dict, limit: int = 3) -> str:
    """'backend.rope.rope_theta 500.0 -> 400000.0; ...': the keys whose values differ, the first `limit`."""
    def short(value) -> str:
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."

    old, new = _flat(old), _flat(new)
    keys = list(new) + [k for k in old if k not in new]
    diffs = [f"{k} {short(old.get(k))} -> {short(new.get(k))}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def claim_predictions(backend, predictions_path: str | Path, settings: dict, overwrite: bool = False) -> dict:
    """Before any work: make predictions_path this run's, keyed on the backend and the benchmark's settings.

    The key goes to `<name>.key.json` beside the predictions. Predictions made with another key, or from
    before keys (no key file), are refused with a ValueError unless `overwrite`, which deletes them.
    Same key: nothing happens and `run_cases` resumes. Returns the key.
    """
    path = Path(predictions_path)
    name = path.name.removesuffix(".predictions.jsonl")
    key_path = path.with_name(f"{name}.key.json")
    key = {"benchmark": name, "backend": backend_identity(backend), "settings": settings}
    key = json.loads(json.dumps(key, default=str))  # as it reads back from the file
    held = path.is_file() and path.stat().st_size > 0
    old = json.loads(key_path.read_text()) if key_path.is_file() else None
    fix = "pass --overwrite (overwrite=True) to discard them, or choose another --output-dir"
    if held and not overwrite:
        if old is None:
            raise ValueError(f"{path.parent}: holds {name} predictions from before tenfold recorded what made "
                             f"them (no {key_path.name}), so they may come from another model or setting; {fix}")
        if old != key:
            raise ValueError(f"{path.parent}: holds {name} predictions made otherwise "
                             f"({key_differences(old, key)}); {fix}")
    if held and overwrite:
        path.unlink()
    if old != key or overwrite:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = key_path.with_name(key_path.name + ".tmp")
        temp.write_text(json.dumps(key, indent=1) + "\n")
        os.replace(temp, key_path)
    return key


def run_cases(backend, cases: list[dict], predictions_path: str | Path, max_new_tokens: int,
              score: Callable[[dict, str], dict], chat: bool = True, desc: str = "eval") -> list[dict]:
    """Generate and score every case not yet in predictions_path; returns all records in case order.

    A case may carry an "answer_prefix": text placed after the chat template, starting the answer.
    A record is the case without its prompt, plus "prediction" and what `score` returns.
    """
    path = Path(predictions_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    finished = load_finished(path)
    todo = [case for case in cases if case["id"] not in finished]
    todo.sort(key=lambda case: len(case["prompt"]))  # similar lengths share a batch
    chunk = max(1, getattr(backend, "batch_size", 8))
    with open(path, "a") as log, tqdm(total=len(cases), initial=len(cases) - len(todo), desc=desc) as bar:
        for start in range(0, len(todo), chunk):
            batch = todo[start:start + chunk]
            prompts = [case["prompt"] for case in batch]
            if any("answer_prefix" in case for case in batch):  # text that starts the answer (RULER)
                prefixes = [case.get("answer_prefix", "") for case in batch]
                predictions = backend.generate(prompts, max_new_tokens, chat=chat, answer_prefix=prefixes)
            else:
                predictions = backend.generate(prompts, max_new_tokens, chat=chat)
            for case, prediction in zip(batch, predictions):
                record = {k: v for k, v in case.items() if k != "prompt"}
                record["prediction"] = prediction
                record.update(score(case, prediction))
                finished[case["id"]] = record
                log.write(json.dumps(record, ensure_ascii=False) + "\n")
            log.flush()
            os.fsync(log.fileno())
            bar.update(len(batch))
    return [finished[case["id"]] for case in cases]


def write_outputs(output_dir: str | Path, name: str, records: list[dict], summary: dict) -> dict:
    """DIR/<name>.json (the per-case list) and DIR/<name>.summary.json; returns the summary."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{name}.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    (output_dir / f"{name}.summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
