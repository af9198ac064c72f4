"""Memory of tenfold's training step at real width, against `tenfold plan` and the checkpointed minimum.

For each model shape (Llama-3-8B's layer shape with 1 and 2 layers; width 1,024 with 2 and 8 layers;
all with Llama-3's 128,256 vocabulary, random weights), dtype (fp32, bf16 autocast) and length, one
QLoRA step of `tenfold train` (NF4, LoRA r32/a16 q/k/v/o, embed_tokens trained, every token labelled)
runs in a fresh process; the step's peak is the process's peak resident memory during that step
(Linux VmHWM, reset just before it), so loading the model does not hide it. Reported per shape and
dtype: the fixed cost and growth per token from a linear fit, the growth per token per layer, and
the same from `tenfold plan`, as ratios; every point's plan beside its measure.

    python benchmarks/memory_scaling.py [--quick] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    FIXED_MMAP_THRESHOLD,
    MODEL_DIR,
    ROOT,
    build_model,
    cpu_peak_bytes,
    markdown_table,
    record,
    reset_cpu_peak,
)

LLAMA3_LAYER = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8)
W1024_LAYER = dict(hidden_size=1024, intermediate_size=3584, num_attention_heads=8, num_key_value_heads=2)
SHAPES = {"l3x1": (LLAMA3_LAYER, 1), "l3x2": (LLAMA3_LAYER, 2), "w1024x2": (W1024_LAYER, 2),
          "w1024x8": (W1024_LAYER, 8)}
FROZEN_EMBEDDING = {"lora.extra_trainable": []}


def points(quick: bool) -> list[tuple[str, str, int, dict]]:
    """(shape, dtype, length, recipe overrides): growth with the embedding frozen at two lengths per group
    (Llama-3-8B's layer, one and two layers), the paper's recipe as it is (embedding trained) at a short
    and a long length, and the tiled MLP. --quick: width 1,024 instead (minutes, not an hour)."""
    untiled = {"model.mlp_tile_tokens": 0}
    if quick:
        return [(shape, "bf16", n, {**FROZEN_EMBEDDING, **untiled}) for shape in ("w1024x2", "w1024x8")
                for n in (8192, 16384)]
    growth = [(shape, dtype, n, {**FROZEN_EMBEDDING, **untiled}) for dtype in ("fp32", "bf16")
              for shape in ("l3x1", "l3x2") for n in (4096, 8192)]
    recipe = [("l3x1", "bf16", n, untiled) for n in (1024, 8192)]
    tiled = [("l3x1", "bf16", 8192, {**FROZEN_EMBEDDING, "model.mlp_tile_tokens": 2048})]
    return growth + recipe + tiled


def model_dir(shape: str) -> Path:
    layer, layers = SHAPES[shape]
    return build_model(MODEL_DIR.with_name(f"llama-{shape}"), shape=dict(layer, num_hidden_layers=layers))


def recipe_for(shape: str, length: int, bf16: bool, overrides: dict | None = None):
    from tenfold.recipe import load_recipe

    return load_recipe(ROOT / "recipes" / "llama3-8b-instruct-80k.yaml", {
        "model.name": str(model_dir(shape)), "model.dtype": "auto", "data.max_length": length,
        "train.mixed_precision": "bf16" if bf16 else "no", **(overrides or {})})


def measure(shape: str, length: int, bf16: bool, overrides: dict) -> dict:
    """Child process: a warm-up step at 256 tokens, then the step at `length` with its own peak."""
    from common import tenfold_step_fn

    recipe = recipe_for(shape, length, bf16, overrides)
    step = tenfold_step_fn(recipe=recipe)
    generator = torch.Generator().manual_seed(0)
    step(torch.randint(0, 128_256, (1, 256), generator=generator))
    input_ids = torch.randint(0, 128_256, (1, length), generator=generator)
    reset_cpu_peak()
    before = cpu_peak_bytes() / 2**30
    started = time.perf_counter()
    loss = step(input_ids)
    seconds = time.perf_counter() - started
    return {"shape": shape, "length": length, "dtype": "bf16" if bf16 else "fp32", "overrides": overrides,
            "before_gib": before, "peak_gib": cpu_peak_bytes() / 2**30, "seconds": seconds,
            "tokens_per_s": length / seconds, "loss": loss, "tile": recipe.model.mlp_tile_tokens,
            "trained_embedding": "embed_tokens" in recipe.lora.extra_trainable}


def measure_in_subprocess(shape: str, length: int, bf16: bool, overrides: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps([shape, length, bf16, overrides])]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **FIXED_MMAP_THRESHOLD))
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{shape} at {length} failed:\n{done.stderr[-3000:]}")


def planned(row: dict) -> float:
    from tenfold.plan import plan_peak

    recipe = recipe_for(row["shape"], row["length"], row["dtype"] == "bf16", row["overrides"])
    return plan_peak(recipe, row["length"], device="cpu")["total_gib"]


def fit(rows: list[dict], key: str) -> tuple[float, float]:
    """(fixed GiB, KiB per token) of a straight line through the points."""
    x = np.array([r["length"] for r in rows], dtype=float)
    y = np.array([r[key] for r in rows], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    return intercept, slope * 2**20


def checkpointed_minimum_kib(shape: str, dtype: str, tile: int, length: int) -> tuple[float, float]:
    """(per token, per token per added layer) in KiB of a checkpointed step: every layer's input kept,
    plus what one layer's recompute saves (tenfold.plan.layer_saved_bytes_per_token)."""
    from tenfold.plan import Shape, layer_saved_bytes_per_token

    layer, layers = SHAPES[shape]
    b = 2 if dtype == "bf16" else 4
    sizes = Shape(layer["hidden_size"], layer["intermediate_size"], layers, layer["num_attention_heads"],
                  layer["num_key_value_heads"], 128_256, False)
    positions = tile / length if tile and length > tile else 1.0
    per_layer = sizes.hidden * b
    return (layers * per_layer + layer_saved_bytes_per_token(sizes, b, positions)) / 1024, per_layer / 1024


def growth_rows(rows: list[dict]) -> list[list]:
    """Per shape and dtype: fixed cost and growth per token (linear fit), planned and measured, beside the
    checkpointed minimum; and per added layer, from the two layer counts of one layer shape."""
    fits, table = {}, []
    frozen = [r for r in rows if not r["trained_embedding"]]  # the trained embedding's gradient hides growth
    for key in sorted({(r["shape"], r["dtype"], r["tile"]) for r in frozen}):
        group = [r for r in frozen if (r["shape"], r["dtype"], r["tile"]) == key]
        if len(group) < 2:
            continue
        (fixed, kib), (plan_fixed, plan_kib) = fit(group, "peak_gib"), fit(group, "plan_gib")
        fits[key] = kib
        minimum, _ = checkpointed_minimum_kib(key[0], key[1], key[2], max(r["length"] for r in group))
        table.append([*key, f"{fixed:.2f}", f"{plan_fixed:.2f}", f"{kib:.0f}", f"{plan_kib:.0f}",
                      f"{kib / plan_kib:.2f}", f"{minimum:.0f}", f"{kib / minimum:.2f}"])
    for dtype in ("fp32", "bf16"):
        for first, second in (("l3x1", "l3x2"), ("w1024x2", "w1024x8")):
            if (first, dtype, 0) in fits and (second, dtype, 0) in fits:
                added = SHAPES[second][1] - SHAPES[first][1]
                per_layer = (fits[(second, dtype, 0)] - fits[(first, dtype, 0)]) / added
                minimum = checkpointed_minimum_kib(first, dtype, 0, 1)[1]
                table.append([f"{first} -> {second}", dtype, 0, "", "", f"{per_layer:.1f} per layer", "", "",
                              f"{minimum:.1f} per layer", f"{per_layer / minimum:.2f}"])
    return table


def report(rows: list[dict], quick: bool, save: bool) -> None:
    point_rows = [[r["shape"], r["dtype"], r["tile"], r["trained_embedding"], r["length"],
                   f"{r['peak_gib']:.2f}", f"{r['plan_gib']:.2f}", f"{r['plan_gib'] / r['peak_gib']:.2f}",
                   f"{r['tokens_per_s']:.0f}"]
                  for r in rows]
    table = markdown_table(["shape", "dtype", "MLP tile", "embedding trained", "length", "measured GiB",
                            "plan GiB", "plan/measured", "tok/s"], point_rows)
    table += "\n\n" + markdown_table(
        ["shape", "dtype", "MLP tile", "fixed GiB", "plan fixed GiB", "KiB/token", "plan KiB/token",
         "measured/plan", "checkpointed minimum KiB/token", "measured/minimum"], growth_rows(rows))
    worst = max(abs(r["plan_gib"] / r["peak_gib"] - 1) for r in rows)
    notes = [f"- worst plan error over {len(rows)} points: {worst:.1%}",
             "- every point: one QLoRA step of tenfold train (NF4, LoRA r32/a16 q/k/v/o, every token "
             "labelled; embed_tokens trained where marked: its 2 GB gradient at the end of the backward hides "
             "the growth below about 8K tokens at width 4,096, so growth is fitted without it) after a "
             "256-token warm-up; peak = VmHWM of that step, reset before it, with a fixed glibc mmap "
             "threshold; random Llama weights, vocab 128,256; l3 = Llama-3-8B's layer (4096/14336, 32/8 "
             "heads); fixed cost and growth from a straight line through each group's points",
             "- checkpointed minimum: every layer's input kept plus what one layer's recompute saves "
             "(counted with saved-tensor hooks); per added layer: one layer input (width x bytes)"]
    if save:
        record("memory_scaling", rows, table, "\n".join(notes), quick=quick)
    else:
        print(table + "\n\n" + "\n".join(notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 1,024 instead of Llama-3-8B's layer")
    parser.add_argument("--no-record", action="store_true", help="print, do not append to BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    for shape, dtype, length, overrides in points(args.quick):
        model_dir(shape)  # built once, outside the measured processes
        row = measure_in_subprocess(shape, length, dtype == "bf16", overrides)
        row["plan_gib"] = planned(row)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report(rows, args.quick, not args.no_record)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        shape, length, bf16, overrides = json.loads(sys.argv[2])
        resource.setrlimit(resource.RLIMIT_AS, (22 * 2**30, 22 * 2**30))
        print(json.dumps(measure(shape, length, bf16, overrides)))
    else:
        main()
