"""Achieved model FLOP/s of tenfold's training step over this machine's measured matmul peak.

The peak is measured in the same run, in the same dtype, right before and right after each timed step (a
4096^3 GEMM, best of 5, about 0.1-1 s): this VM's speed drifts (a 2048^3 GEMM measured once per dtype moved 6x
within three hours), so each row is compared with the better of the two measurements around it, and both are
in the table: a row whose two peaks differ much ran on a machine that changed under it.
Model FLOPs per step follow the usual convention: 6 x (non-embedding parameters, LM head included)
x tokens for the matmuls, plus 6 x layers x hidden x tokens^2 for causal attention (forward and
backward; recomputation by gradient checkpointing is not counted). Peak = the process's resident
peak during the timed step (VmHWM, reset before it). Each row also times the attention kernel alone at the
model's shape (SDPA's forward, its recompute and backward, for every layer): the model's FLOPs over that
time and the peak bound the row's fraction of peak, whatever the rest of the step costs.

    python benchmarks/train_speed.py [--quick] [--hidden 512 --layers 4]
    python benchmarks/train_speed.py --model tenfold/smollm2-135m-instruct --lengths 2048,8192,16384 \
        --quantization nf4,none --dtypes fp32,bf16 [--profile 2048]

--profile LENGTH: torch.profiler's op table of one step at that length (first quantization and dtype), the
15 ops with the most self CPU time, printed and stored in results/train_speed_profile.txt.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import (
    MODEL_DIR,
    RESULTS,
    build_model,
    cpu_peak_bytes,
    markdown_table,
    paper_recipe,
    record,
    reset_cpu_peak,
    tenfold_step_fn,
)


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best


def model_flops(config: dict, length: int) -> float:
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    ffn, vocab = config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * (d // config["num_attention_heads"])
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * ffn  # q, o, k, v, gate/up/down
    params = layers * per_layer + d * vocab  # LM head included, embeddings (a lookup) not
    return 6 * params * length + 6 * layers * d * length ** 2


def attention_seconds(config: dict, length: int, dtype: torch.dtype) -> float:
    """One layer's attention as a checkpointed step runs it: SDPA's forward twice (the recompute) and its backward."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    shape = (1, heads, length, config["hidden_size"] // heads)
    q = torch.randn(shape, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(shape[:1] + (kv_heads,) + shape[2:], dtype=dtype, requires_grad=True) for _ in range(2))
    grad = torch.randn(shape, dtype=dtype)

    def attention():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=heads != kv_heads)

    attention().backward(grad)  # warm-up: the first backward sets up
    started = time.perf_counter()
    with torch.no_grad():
        attention()
    attention().backward(grad)
    return time.perf_counter() - started


def timed_step(model_dir, config: dict, length: int, dtype_name: str, quantization: str) -> dict:
    step = tenfold_step_fn(recipe=paper_recipe(model_dir, length, dtype_name == "bf16", quantization=quantization))
    generator = torch.Generator().manual_seed(0)
    step(torch.randint(0, config["vocab_size"], (1, 256), generator=generator))
    input_ids = torch.randint(0, config["vocab_size"], (1, length), generator=generator)
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    before = matmul_peak(dtype)
    reset_cpu_peak()
    started = time.perf_counter()
    step(input_ids)
    seconds = time.perf_counter() - started
    peak_gib = cpu_peak_bytes() / 2**30  # read before the second GEMM's buffers
    after = matmul_peak(dtype)
    attention = config["num_hidden_layers"] * attention_seconds(config, length, dtype)
    flops, peak = model_flops(config, length), max(before, after)
    return {"path": "tenfold", "quantization": quantization, "dtype": dtype_name, "length": length,
            "seconds": seconds, "tokens_per_s": length / seconds, "peak_gib": peak_gib,
            "model_flops_per_s": flops / seconds, "matmul_peak_before_flops_per_s": before,
            "matmul_peak_after_flops_per_s": after, "fraction_of_peak": flops / seconds / peak,
            "attention_seconds": attention, "attention_bound": flops / attention / peak}


def profile_step(model_dir, config: dict, length: int, dtype_name: str, quantization: str) -> str:
    from torch.profiler import ProfilerActivity, profile

    step = tenfold_step_fn(recipe=paper_recipe(model_dir, length, dtype_name == "bf16", quantization=quantization))
    input_ids = torch.randint(0, config["vocab_size"], (1, length), generator=torch.Generator().manual_seed(0))
    step(input_ids[:, :256])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(input_ids)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    header = f"one step, {length} tokens, {quantization}, {dtype_name}, model {model_dir}\n"
    (RESULTS / "train_speed_profile.txt").write_text(header + table + "\n")
    return header + table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4K only, bf16 only")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--model", help="a model name or folder (default: a random Llama of --hidden/--layers "
                                        "with Llama-3's vocabulary)")
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--quantization", default="nf4", help="comma-separated: nf4, none")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    parser.add_argument("--profile", type=int, metavar="LENGTH")
    args = parser.parse_args()
    if args.model:
        from tenfold.models import load_config

        model_dir, config = args.model, load_config(args.model).to_dict()
    else:
        model_dir = build_model(MODEL_DIR.with_name(f"llama-128k-vocab-h{args.hidden}-l{args.layers}"),
                                hidden=args.hidden, layers=args.layers, heads=max(1, args.hidden // 32))
        config = json.loads((Path(model_dir) / "config.json").read_text())
    lengths = [4096] if args.quick else [int(n) for n in args.lengths.split(",")]
    dtypes = ["bf16"] if args.quick else args.dtypes.split(",")
    quantizations = args.quantization.split(",")
    if args.profile:
        RESULTS.mkdir(parents=True, exist_ok=True)
        print(profile_step(model_dir, config, args.profile, dtypes[0], quantizations[0]), flush=True)
    rows = []
    for dtype_name in dtypes:
        for quantization in quantizations:
            for length in lengths:
                rows.append(timed_step(model_dir, config, length, dtype_name, quantization))
                print(rows[-1], flush=True)
    table = markdown_table(
        ["quantization", "dtype", "length", "tokens/s", "peak GiB", "model GFLOP/s",
         "matmul peak GFLOP/s before / after", "of the better peak", "attention s", "attention bound"],
        [[r["quantization"], r["dtype"], r["length"], f"{r['tokens_per_s']:.0f}", f"{r['peak_gib']:.2f}",
          f"{r['model_flops_per_s'] / 1e9:.1f}", f"{r['matmul_peak_before_flops_per_s'] / 1e9:.0f} / "
          f"{r['matmul_peak_after_flops_per_s'] / 1e9:.0f}",
          f"{100 * r['fraction_of_peak']:.1f}%", f"{r['attention_seconds']:.1f}",
          f"{100 * r['attention_bound']:.0f}%"] for r in rows])
    model = args.model or f"Llama, vocab 128,256, hidden {args.hidden}, {args.layers} layers"
    record("train_speed", rows, table, f"- model: {model}; the paper's recipe (LoRA r32/a16 on q/k/v/o, "
           "embed_tokens trained, gradient checkpointing); every token carries loss; one warm-up step at 256 "
           "tokens, then one timed step.\n- attention s: SDPA alone at the model's head shape and the row's length and "
           "dtype, as the step runs it (forward, its recompute, backward) times the layers, timed right after the "
           "step; attention bound: the model's FLOP/s over the better peak were the step nothing but that "
           "attention: no row can exceed it.", quick=args.quick)


if __name__ == "__main__":
    main()
