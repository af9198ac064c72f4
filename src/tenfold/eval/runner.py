"""What every benchmark shares: the length check, resumable predictions, batched generation, outputs.

A benchmark builds its cases (each a dict with a unique "id", a "prompt" and whatever its scorer
needs), then `run_cases` generates the unfinished ones a batch at a time, scores them, and appends
each finished case to `<name>.predictions.jsonl` as soon as it is done, so a killed run started
again re-runs no finished case. Cases of similar length are batched together (left padding), which
is what makes a needle grid several times faster than one generate call per cell.
"""

from __future__ import annotations

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
