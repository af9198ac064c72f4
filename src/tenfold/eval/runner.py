"""What every benchmark shares: the length check, resumable predictions, batched generation, outputs.

A benchmark builds its cases (each a dict with a unique "id", a "prompt" and whatever its scorer
needs), then `run_cases` generates the unfinished ones a batch at a time, scores them, and appends
each finished case to `<name>.predictions.jsonl` as soon as it is done, so a killed run started
again re-runs no finished case. Cases of similar length are batched together (left padding), which
is what makes a needle grid several times faster than one generate call per cell.

Resuming is keyed: `claim_predictions` stores what makes the predictions (the backend's identity and
the benchmark's settings, the generation controls of its tasks among them) in `<name>.key.json` beside
them, and refuses a folder whose predictions were made otherwise, unless told to discard them
(`overwrite=True`, `--overwrite`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from tenfold.errors import UserError
from tenfold.generation import GenerationControls
from tenfold.io import AppendLog, write_atomic


def check_length(backend, benchmark: str, longest_prompt: int, max_new_tokens: int) -> None:
    """Refuse, before any work, a length the model cannot hold."""
    need = longest_prompt + max_new_tokens
    if backend.max_length is not None and need > backend.max_length:
        raise UserError(
            f"{benchmark}: a {longest_prompt}-token prompt plus {max_new_tokens} new tokens exceeds what "
            f"{backend.name} holds ({backend.max_length} tokens); drop the longer lengths, or pass "
            f"--max-length {need} to run past the model's configured length anyway (to see where it fails)")
    estimate = getattr(backend, "generation_bytes", None)
    if estimate is not None:
        needed, free = estimate(need), backend.free_bytes()
        if needed > free:
            raise UserError(
                f"{benchmark}: generating from {need} tokens needs about {needed / 2**30:.1f} GiB (KV cache and "
                f"activations of one batch) but {free / 2**30:.1f} GiB are free on {backend.device}; drop the "
                f"longer lengths or lower --batch-size")


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
    Same key: nothing happens and `run_cases` resumes. Returns the key. Settings may hold dataclasses
    (GenerationControls: whatever `run_cases` is given as controls belongs here too).
    """
    def plain(value):
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else str(value)

    path = Path(predictions_path)
    name = path.name.removesuffix(".predictions.jsonl")
    key_path = path.with_name(f"{name}.key.json")
    key = {"benchmark": name, "backend": backend_identity(backend), "settings": settings}
    key = json.loads(json.dumps(key, default=plain))  # as it reads back from the file
    held = path.is_file() and path.stat().st_size > 0
    old = json.loads(key_path.read_text()) if key_path.is_file() else None
    fix = "pass --overwrite (overwrite=True) to discard them, or choose another --output-dir"
    if held and not overwrite:
        if old is None:
            raise UserError(f"{path.parent}: holds {name} predictions from before tenfold recorded what made "
                             f"them (no {key_path.name}), so they may come from another model or setting; {fix}")
        if old != key:
            raise UserError(f"{path.parent}: holds {name} predictions made otherwise "
                             f"({key_differences(old, key)}); {fix}")
    if held and overwrite:
        path.unlink()
    if old != key or overwrite:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(key_path, json.dumps(key, indent=1) + "\n", "--output-dir")
    return key


def resume_cases(cases: list[dict], predictions_path: str | Path, predict: Callable[[list[dict]], list[dict]],
                 batch_size: int, desc: str, sort_key: Callable[[dict], int] | None = None) -> list[dict]:
    """Run `predict` (a batch of cases -> their records, each with the case's "id") on every case not yet in
    predictions_path, `batch_size` at a time (in `sort_key` order), appending each batch's records as soon as
    it is done; returns all records in case order."""
    log = AppendLog(predictions_path, "--output-dir", "delete the file to start over")
    finished = log.finished()
    todo = [case for case in cases if case["id"] not in finished]
    if sort_key is not None:
        todo.sort(key=sort_key)
    batch_size = max(1, batch_size)
    with tqdm(total=len(cases), initial=len(cases) - len(todo), desc=desc) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            records = predict(batch)
            log.append(records)
            finished.update((record["id"], record) for record in records)
            bar.update(len(batch))
    return [finished[case["id"]] for case in cases]


def prompt_tokens(backend, case: dict, chat: bool = True) -> int:
    """A case's length in the model's tokens (template and answer prefix included), which batches are bucketed by:
    characters mislead where texts differ in characters per token (code, digits, other scripts). Its characters
    where the backend counts no tokens (an API without --tokenizer)."""
    if getattr(backend, "tokenizer", None) is None:
        return len(case["prompt"])
    return backend.prompt_length(case["prompt"], chat, case.get("answer_prefix", ""))


def run_cases(backend, cases: list[dict], predictions_path: str | Path, max_new_tokens: int,
              score: Callable[[dict, str], dict], chat: bool = True, desc: str = "eval",
              controls: GenerationControls | None = None,
              post_process: Callable[[str], str] | None = None) -> list[dict]:
    """Generate and score every case not yet in predictions_path; returns all records in case order.

    A case may carry an "answer_prefix": text placed after the chat template, starting the answer.
    `controls` (stop strings, first-token bans) hold for every case of this call: a benchmark with rules per
    dataset calls once per dataset, and keys its predictions on them (claim_predictions' settings).
    `post_process` rewrites each generated text before it is stored and scored (LongBench, InfiniteBench: the
    space clean-up of transformers 4).
    A record is the case without its prompt, plus "prediction" and what `score` returns.
    """
    def predict(batch: list[dict]) -> list[dict]:
        prompts = [case["prompt"] for case in batch]
        prefixes = [case.get("answer_prefix", "") for case in batch]  # text that starts the answer (RULER)
        predictions = backend.generate(prompts, max_new_tokens, chat=chat, answer_prefix=prefixes, controls=controls)
        if post_process is not None:
            predictions = [post_process(prediction) for prediction in predictions]
        return [{**{k: v for k, v in case.items() if k != "prompt"}, "prediction": prediction,
                 **score(case, prediction)} for case, prediction in zip(batch, predictions)]

    # similar lengths in tokens share a batch: little padding
    return resume_cases(cases, predictions_path, predict, getattr(backend, "batch_size", 8), desc,
                        sort_key=lambda case: prompt_tokens(backend, case, chat))


def write_outputs(output_dir: str | Path, name: str, records: list[dict], summary: dict) -> dict:
    """DIR/<name>.json (the per-case list) and DIR/<name>.summary.json; returns the summary."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(output_dir / f"{name}.json", json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    write_atomic(output_dir / f"{name}.summary.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


CLEAN_UP_SPACES = ("tokenizer", "yes", "no")


def transformers4_clean_up(tokenizer, text: str, clean_up_spaces: str = "tokenizer") -> str:
    """Decoded text as transformers 4.x gave it, which the reference codes ran (the paper's 4.35.1 and 4.39.3,
    LongBench's 4.31.0): their decode cleaned up tokenization spaces (" ." -> ".", " 's" -> "'s", ...) whenever
    the tokenizer's config said so or said nothing (the default was True), BPE tokenizers included;
    transformers 5 skips that for BPE tokenizers. Llama-3's config says true (the paper's runs); "yes" or
    "no" overrides the config (a newer copy of a model's config may say otherwise)."""
    if clean_up_spaces not in CLEAN_UP_SPACES:
        raise UserError(f"clean_up_spaces {clean_up_spaces!r}; use tokenizer, yes or no")
    clean = clean_up_spaces == "yes" or (
        clean_up_spaces == "tokenizer" and tokenizer.init_kwargs.get("clean_up_tokenization_spaces", True))
    return tokenizer.clean_up_tokenization(text) if clean else text


def transformers4_decode(tokenizer, ids: list[int], clean_up_spaces: str = "tokenizer",
                         skip_special_tokens: bool = False) -> str:
    """tokenizer.decode(ids) as transformers 4.x decoded (see transformers4_clean_up)."""
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)
    return transformers4_clean_up(tokenizer, text, clean_up_spaces)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
