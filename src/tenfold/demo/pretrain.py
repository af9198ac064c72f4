"""Train the demo's base model, `tenfold/toy-llama`, from a fixed seed: `python -m tenfold.demo.pretrain OUT`.

A tiny Llama (2 layers, width 128, 4 heads of 32, RoPE base 500, native context 256 tokens) that is
both a small language model of the toy world's diaries and a retriever of its facts, and that fails
past its native length the way Llama-3 fails past 8K. The schedule is the one that made this take
minutes on a CPU (docs/demo.md, and the feasibility notes' third study):

  phase A (steps 0..PHASE_A): questions only, loss on the answers; one fact a document for the first
          half, then up to 4 facts and 1-3 questions; the longest sequence grows 16 -> 256 tokens over
          the first CURRICULUM steps (without that curriculum retrieval never leaves chance); 30% of
          facts at the very start of the document (else depth 0 stays weak).
  phase B (to STEPS): each step also carries 32 plain 256-token diaries with language-model loss, its
          weight ramped 0 -> 1 over RAMP steps (trained jointly from the start, the LM gradient swamps
          the retrieval signal and the answers stay at chance).

Every step's data is drawn from its own seed, so a killed run resumes from OUT/checkpoint.pt and reaches
the same weights. At the end the script measures the model (needle at 1x and 10x, loss per position)
into OUT/pretrain.json. The model's tokenizer is made here too (`world_tokenizer`): it also learns the
offline generator's questions, which tenfold.toy, a floor below synth, cannot import.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerFast

from tenfold.records import encode_record
from tenfold.synth.extractive import extract
from tenfold.toy import build_model, build_tokenizer, plain_record, question_record

NATIVE_LENGTH = 256
ROPE_THETA = 500.0
SEED = 0
STEPS, PHASE_A, ONE_FACT_STEPS, CURRICULUM, RAMP, WARMUP = 900, 400, 200, 300, 100, 50
BATCH = 64  # sequences a step: all questions in phase A, half questions and half diaries in phase B
LEARNING_RATE = 2e-3
TOY_LLAMA = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=NATIVE_LENGTH, rope_theta=ROPE_THETA)


def tokenizer_texts(seed: int = 1234) -> list[str]:
    """What the tokenizer learns from: rendered question records (template, answers), plain documents,
    and the offline generator's questions and answers about toy documents (single and multi detail)."""
    rng, texts = random.Random(seed), []
    for i in range(300):
        record = question_record(rng.randint(4, 30), rng.randint(1, 4), 3, rng)
        texts.append(render_plain(record["conversations"]))
        text = plain_record(rng.randint(10, 40), rng, n_facts=4)["text"]
        texts.append(text)
        for task in ("single_detail", "multi_detail"):
            texts.append(extract(task, [text], 4))
    return texts


def render_plain(turns: list[dict]) -> str:
    """Turns written as the chat template writes them, without the special tokens (which BPE never merges)."""
    return "".join(f"{t['role']}\n\n{t['content'].strip()}" for t in turns)


def world_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """`toy.build_tokenizer` trained on the toy world: every word of the world, and every two-digit number both
    after a space (in documents) and alone (an answer), is one token."""
    numbers = [" ".join(f"{n}" for n in range(100))] * 20 + ["\n\n".join(f"{n}" for n in range(100))] * 20
    return build_tokenizer(tokenizer_texts() + numbers, vocab_size)


def question_batch(step: int, n: int, tokenizer, rng: random.Random) -> list:
    longest = min(NATIVE_LENGTH, 16 + (NATIVE_LENGTH - 16) * step // CURRICULUM)
    rows = []
    for i in range(n):
        n_facts = 1 if step < ONE_FACT_STEPS else rng.randint(1, 4)
        n_questions = 1 if step < ONE_FACT_STEPS else rng.randint(1, 3)
        overhead = 14 + 9 * n_facts + 14 * n_questions  # template, facts and question turns, in tokens
        n_lines = max(0, (rng.randint(16, longest) - overhead) // 12)
        record = question_record(n_lines, n_facts, n_questions, rng, edge_prob=0.3, record_id=f"s{step}-q{i}")
        rows.append(encode_record(record, tokenizer, NATIVE_LENGTH))
    return rows


def diary_batch(step: int, n: int, tokenizer, rng: random.Random) -> list:
    return [encode_record(plain_record(NATIVE_LENGTH // 11, rng, record_id=f"s{step}-d{i}"), tokenizer, NATIVE_LENGTH)
            for i in range(n)]


def padded(rows: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(r.input_ids) for r in rows)
    ids = torch.tensor([r.input_ids + [pad_id] * (width - len(r.input_ids)) for r in rows])
    weights = torch.tensor([r.weights + [0.0] * (width - len(r.weights)) for r in rows])
    mask = torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows])
    return ids, weights, mask


def weighted_loss(model, rows: list, pad_id: int, micro_batches: int = 4) -> torch.Tensor:
    """Weighted mean next-token loss; rows sorted by length into micro-batches so little is padding."""
    rows = sorted(rows, key=lambda r: len(r.input_ids))
    size = -(-len(rows) // micro_batches)
    total, weight = torch.zeros(()), sum(sum(r.weights) for r in rows)
    for start in range(0, len(rows), size):
        ids, weights, mask = padded(rows[start:start + size], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        total = total + (losses * weights[:, 1:]).sum()
    return total / weight


def learning_rate(step: int) -> float:
    """Linear warm-up to LEARNING_RATE over WARMUP steps, then half a cosine down to 0 at STEPS.

    Not transformers' get_cosine_schedule_with_warmup: that one has the same rates from step WARMUP on but warms
    up from 0 (step s at s/WARMUP of the peak, here (s+1)/WARMUP, so its first step does not move the weights),
    and no choice of its arguments gives this warm-up. The shipped toy-llama was trained with this schedule, so
    a rerun of the script keeps it (tests/demo/test_demo.py holds the two schedules side by side)."""
    if step < WARMUP:
        return LEARNING_RATE * (step + 1) / WARMUP
    return LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


def pretrain(out_dir: str | Path, steps: int = STEPS) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = world_tokenizer()
    model = build_model(tokenizer, seed=SEED, **TOY_LLAMA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.98), weight_decay=0.01)
    start, log = 0, []
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, log = state["step"], state["log"]
        print(f"resuming from {checkpoint} at step {start}")
    started = time.perf_counter()
    model.train()
    for step in tqdm(range(start, steps), initial=start, total=steps, desc="pretrain"):
        rng = random.Random(f"pretrain-{SEED}-{step}")
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        if step < PHASE_A:
            answer_loss = weighted_loss(model, question_batch(step, BATCH, tokenizer, rng), tokenizer.pad_token_id)
            lm_loss, lm_weight = torch.zeros(()), 0.0
        else:
            answer_loss = weighted_loss(model, question_batch(step, BATCH // 2, tokenizer, rng), tokenizer.pad_token_id)
            lm_loss = weighted_loss(model, diary_batch(step, BATCH // 2, tokenizer, rng), tokenizer.pad_token_id)
            lm_weight = min(1.0, (step - PHASE_A + 1) / RAMP)
        loss = answer_loss + lm_weight * lm_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        log.append({"step": step + 1, "answer_loss": round(answer_loss.item(), 4), "lm_loss": round(lm_loss.item(), 4)})
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: answer loss {answer_loss.item():.3f}, lm loss {lm_loss.item():.3f}", flush=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1,
                        "log": log}, tmp)
            tmp.replace(checkpoint)
    seconds = time.perf_counter() - started
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    figures = measure_base(out_dir)
    report = {"seed": SEED, "steps": steps, "seconds_this_run": round(seconds, 1), "threads": torch.get_num_threads(),
              "parameters": sum(p.numel() for p in model.parameters()), "figures": figures, "log": log}
    (out_dir / "pretrain.json").write_text(json.dumps(report, indent=1) + "\n")
    checkpoint.unlink(missing_ok=True)
    return report


def measure_base(model_dir: Path) -> dict:
    """The base's recorded figures: needle at 1x and 10x (depths 0..100, 20 a cell), loss per position."""
    from tenfold.demo.measure import loss_by_position, needle_grid, short_check
    from tenfold.generation import load_backend

    backend = load_backend(str(model_dir), max_length=10 * NATIVE_LENGTH + 8, batch_size=32)
    work = model_dir / "measure"
    grid = needle_grid(backend, work, "needle", [NATIVE_LENGTH, 10 * NATIVE_LENGTH], [0, 25, 50, 75, 100], 20,
                       "toy-llama")
    figures = {"needle": grid, "loss_by_position": loss_by_position(backend.model, backend.tokenizer, NATIVE_LENGTH),
               "short_check": short_check(backend, work, "short", NATIVE_LENGTH)}
    shutil.rmtree(work)
    return figures


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tenfold.demo.pretrain OUT_DIR [STEPS]")
    result = pretrain(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else STEPS)
    print(json.dumps(result["figures"], indent=1))
