"""A mixed-length LongBench-style eval run: tenfold's batches bucketed by token length against the unbucketed
loop (the cases in dataset order, `batch_size` at a time, each batch padded to its longest prompt), against
buckets by characters (what tenfold did before), and against one case at a time, on one model of real width.

The prompts mix prose (few tokens per character) and letter salad standing in for code and digits (many), of
lengths spread like a LongBench dataset's (a few short, most mid-length, a long tail), answers of 16 tokens.
The model is a random Llama of width 1,024 with the tiny tokenizer's vocabulary, so its layers dominate as in
a real model; the three arms generate the same predictions (greedy; checked) and differ only in padding.

    python benchmarks/eval_bucketing.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from common import markdown_table, record

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROSE, SALAD = "the red fox paints two blue doors . ", "qz xv kj wp "


def mixed_cases(tokenizer, n: int, longest: int, seed: int = 0) -> list[dict]:
    """n prompts, half prose and half salad, with token lengths drawn like a long-context dataset's."""
    rng, cases = random.Random(seed), []
    for i in range(n):
        target = int(min(longest, max(64, rng.lognormvariate(0, 0.6) * longest / 3)))
        unit = PROSE if i % 2 else SALAD
        per_unit = len(tokenizer(unit, add_special_tokens=False)["input_ids"])
        cases.append({"id": f"c{i}", "prompt": unit * max(1, target // per_unit)})
    return cases


def run_arm(backend, cases: list[dict], order, max_new_tokens: int, batch_size: int) -> tuple[float, list[str], int]:
    """Generate in batches of batch_size in the given order; (seconds, predictions, padded tokens)."""
    from tenfold.eval.runner import prompt_tokens

    todo = sorted(cases, key=order) if order else list(cases)
    predictions, padded, start = {}, 0, time.perf_counter()
    for i in range(0, len(todo), batch_size):
        batch = todo[i:i + batch_size]
        padded += len(batch) * max(prompt_tokens(backend, case) for case in batch)
        for case, text in zip(batch, backend.generate([c["prompt"] for c in batch], max_new_tokens)):
            predictions[case["id"]] = text
    return time.perf_counter() - start, [predictions[c["id"]] for c in cases], padded


def main() -> None:
    from tenfold import toy
    from tenfold.eval.runner import prompt_tokens
    from tenfold.generation import load_backend

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 prompts up to 512 tokens (under a minute)")
    parser.add_argument("--no-record", action="store_true", help="print, do not append to BENCHMARKS.md")
    args = parser.parse_args()
    n, longest, width, layers = (12, 512, 1024, 2) if args.quick else (32, 1536, 1024, 4)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = toy.write_tiny_llama(Path(tmp) / "m", hidden_size=width, intermediate_size=7 * width // 2,
                                         num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=4,
                                         max_position_embeddings=4096)
        backend = load_backend(str(model_dir), batch_size=8, max_length=4096)
        cases = mixed_cases(backend.tokenizer, n, longest)
        arms = {"unbucketed loop (dataset order)": (None, 8), "one case at a time": (None, 1),
                "buckets by characters": (lambda case: len(case["prompt"]), 8),
                "tenfold: buckets by tokens": (lambda case: prompt_tokens(backend, case), 8)}
        results = {name: run_arm(backend, cases, order, 16, size) for name, (order, size) in arms.items()}
    real = sum(prompt_tokens(backend, case) for case in cases)
    base_seconds, base_predictions, _ = results["unbucketed loop (dataset order)"]
    rows = [[name, f"{seconds:.1f}", f"{padded:,}", f"{padded / real:.2f}", f"{base_seconds / seconds:.2f}x",
             predictions == base_predictions] for name, (seconds, predictions, padded) in results.items()]
    table = markdown_table(["arm", "seconds", "padded prompt tokens", "padded / real", "speed-up", "same predictions"],
                           rows)
    notes = (f"{n} prompts, {real:,} prompt tokens ({min(prompt_tokens(backend, c) for c in cases)}.."
             f"{max(prompt_tokens(backend, c) for c in cases)}), batches of 8, 16 new tokens; random Llama width "
             f"{width} x {layers} layers (MLP {7 * width // 2}), fp32. Command: python benchmarks/eval_bucketing.py"
             f"{' --quick' if args.quick else ''}")
    if args.no_record:
        print(table + "\n\n" + notes)
    else:
        record("eval_bucketing", [dict(zip(["arm", "seconds", "padded", "ratio", "speedup", "same"], r)) for r in rows],
               table, notes, args.quick)


if __name__ == "__main__":
    main()
