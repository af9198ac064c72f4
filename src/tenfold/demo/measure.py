"""The demo's three measurements of a model on the toy world, each from fixed seeds:

- needle grid: one fact ("the number of anna is 42 .") at a depth of a diary of a given length, then
  its question; exact match of the number. Reuses the eval runner (batched, resumable predictions)
  and the needle heatmap of `tenfold eval`.
- loss by position: the language-model loss (nats per token) on held-out diaries of ten times the
  native length, averaged over bins of the native length: the classic context-extension curve.
- short check: exact match on short questions (within the native length), the demo's stand-in for
  MMLU: is the original ability intact?
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from tenfold.eval.plots import heatmap
from tenfold.eval.runner import claim_predictions, mean, model_lengths, run_cases
from tenfold.toy import document, needle_case

ANSWER_TOKENS = 3  # the number, the end-of-turn token, and one spare


def exact_match(case: dict, prediction: str) -> dict:
    return {"score": float(prediction.strip() == case["answer"])}


def needle_grid(backend, out_dir: str | Path, name: str, lengths: list[int], depths: list[float],
                samples: int, title: str, overwrite: bool = False) -> list[dict]:
    """Accuracy per (length, depth) cell; writes NAME.predictions.jsonl and NAME.png (with the model's native
    and training lengths marked); returns the GRID. Predictions there made otherwise (another model, RoPE,
    grid) are refused, or discarded with `overwrite`."""
    out_dir = Path(out_dir)
    cases = [needle_case(backend.tokenizer, length, depth, random.Random(f"needle-{length}-{depth:g}-{k}"),
                         f"L{length}-D{depth:g}-{k}")
             for length in lengths for depth in depths for k in range(samples)]
    path = out_dir / f"{name}.predictions.jsonl"
    claim_predictions(backend, path, {"lengths": lengths, "depths": depths, "samples": samples,
                                      "max_new_tokens": ANSWER_TOKENS}, overwrite)
    records = run_cases(backend, cases, path, ANSWER_TOKENS, exact_match, desc=f"needle {name}")
    heatmap(records, out_dir / f"{name}.png", title, lengths=model_lengths(backend))
    return [{"length": length, "depth": depth,
             "accuracy": mean(r["score"] for r in records if r["length"] == length and r["depth"] == depth)}
            for length in lengths for depth in depths]


def held_out_documents(tokenizer, n_documents: int, n_tokens: int, seed: str = "held-out") -> torch.Tensor:
    """[n_documents, n_tokens] token ids of diaries (BOS first) never seen in training (their own seed)."""
    rng, rows = random.Random(seed), []
    for _ in range(n_documents):
        text = "\n".join(document(n_tokens // 10, rng))  # a line is 12 tokens: more than enough lines
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append([tokenizer.bos_token_id] + ids[:n_tokens - 1])
    return torch.tensor(rows)


@torch.no_grad()
def loss_by_position(model, tokenizer, native_length: int, factor: int = 10, n_documents: int = 16,
                     batch_size: int = 4) -> list[float]:
    """Mean next-token loss over positions [i*native, (i+1)*native) for i in 0..factor-1."""
    ids = held_out_documents(tokenizer, n_documents, native_length * factor)
    device = next(model.parameters()).device
    totals = torch.zeros(ids.shape[1] - 1, dtype=torch.float64)
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        totals += losses.sum(0).double().cpu()
    per_token = totals / len(ids)  # per_token[t]: loss of predicting token t + 1
    positions = torch.arange(1, ids.shape[1])
    return [float(per_token[(positions // native_length) == i].mean()) for i in range(factor)]


def short_check(backend, out_dir: str | Path, name: str, native_length: int, samples: int = 100,
                overwrite: bool = False) -> float:
    """Exact match on `samples` short questions: one fact in a diary of 32..native tokens, any depth."""
    rng = random.Random("short-check")
    cases = [needle_case(backend.tokenizer, rng.randint(32, native_length), rng.choice([0, 25, 50, 75, 100]),
                         random.Random(f"short-{k}"), f"short-{k}") for k in range(samples)]
    path = Path(out_dir) / f"{name}.predictions.jsonl"
    claim_predictions(backend, path, {"native_length": native_length, "samples": samples,
                                      "max_new_tokens": ANSWER_TOKENS}, overwrite)
    records = run_cases(backend, cases, path, ANSWER_TOKENS, exact_match, desc=f"short {name}")
    return mean(r["score"] for r in records)
