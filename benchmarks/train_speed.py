"""Achieved model FLOP/s of tenfold's training step over this machine's measured matmul peak.

The peak is measured in the same run, in the same dtype (a large square GEMM, best of several).
Model FLOPs per step follow the usual convention: 6 x (non-embedding parameters, LM head included)
x tokens for the matmuls, plus 6 x layers x hidden x tokens^2 for causal attention (forward and
backward; recomputation by gradient checkpointing is not counted).

    python benchmarks/train_speed.py [--quick] [--hidden 512 --layers 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import MODEL_DIR, build_model, markdown_table, record, tenfold_step_fn


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4K only, bf16 only")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    model_dir = build_model(MODEL_DIR.with_name(f"llama-128k-vocab-h{args.hidden}-l{args.layers}"),
                            hidden=args.hidden, layers=args.layers, heads=max(1, args.hidden // 32))
    config = json.loads((Path(model_dir) / "config.json").read_text())
    lengths = [4096] if args.quick else [4096, 16384]
    rows, table_rows = [], []
    for dtype_name in (["bf16"] if args.quick else ["fp32", "bf16"]):
        bf16 = dtype_name == "bf16"
        peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
        for length in lengths:
            step = tenfold_step_fn(model_dir, length, bf16)
            generator = torch.Generator().manual_seed(0)
            step(torch.randint(0, config["vocab_size"], (1, 256), generator=generator))
            input_ids = torch.randint(0, config["vocab_size"], (1, length), generator=generator)
            started = time.perf_counter()
            step(input_ids)
            seconds = time.perf_counter() - started
            achieved = model_flops(config, length) / seconds
            rows.append({"path": "tenfold", "dtype": dtype_name, "length": length, "seconds": seconds,
                         "tokens_per_s": length / seconds, "model_flops_per_s": achieved,
                         "matmul_peak_flops_per_s": peak, "fraction_of_peak": achieved / peak})
            table_rows.append([dtype_name, length, f"{length / seconds:.0f}", f"{achieved / 1e9:.1f}",
                               f"{peak / 1e9:.1f}", f"{100 * achieved / peak:.1f}%"])
            print(rows[-1], flush=True)
    table = markdown_table(["dtype", "length", "tokens/s", "model GFLOP/s", "matmul peak GFLOP/s", "of peak"],
                           table_rows)
    record("train_speed", rows, table, f"- model: Llama, vocab 128,256, hidden {args.hidden}, {args.layers} layers; "
           "NF4 base, LoRA r32/a16 on q/k/v/o, embed_tokens trained; every token carries loss; one warm-up step "
           "at 256 tokens, then one timed step.", quick=args.quick)


if __name__ == "__main__":
    main()
