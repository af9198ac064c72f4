"""One GPU, under 8 minutes: tenfold's QLoRA step on a Llama-3-8B-shaped model against `tenfold plan`.

Points: 16K, 32K and 80K (81,920) tokens and the planner's longest context for this GPU, each with and
without activation offload (model.offload_activations). For each point: the measured peak
(torch.cuda.max_memory_allocated from the timed step's start) beside the plan's prediction, tokens/s and
MFU. Every point runs in a fresh process (common.measure_in_subprocess: one warm-up step at 256 tokens,
then the timed step; same random token ids, every token labelled). The model (random weights, vocabulary
128,256, bf16) is built once on the GPU. Appends its table to BENCHMARKS.md (common.record).

    bash benchmarks/gpu_check.sh [--budget-s 440] [--dry-run] [--memory-gib 80]

MFU = model FLOPs of the step / (step seconds x this GPU's bf16 peak), the peak measured here with a
bf16 matmul (8192 x 8192, best of 10 rounds), as train_speed.py measures a CPU's; it is below the data
sheet's figure (H100 SXM: 989 TFLOP/s dense).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LLAMA3_8B, benchmark_model, llama_config, markdown_table, measure_in_subprocess, paper_recipe, record  # noqa: E402

LENGTHS = (16384, 32768, 81920)
# Time budget on one H100/H200 (estimates, not yet measured): preparing is ~90 s the first time (random
# 8B init on the GPU, 16 GB of safetensors written) and ~10 s after; each point's fresh process costs
# ~25 s besides its step (imports, loading 16 GB from the page cache, NF4 quantization, the warm-up step);
# the steps at ~35% MFU: 16K ~3 s, 32K ~7 s, 80K ~30 s, offload adding ~10-20%. The six fixed points then
# take ~4 min and the whole run ~5.5 min; the planner's longest context (hundreds of K tokens on 80+ GB,
# minutes a step: attention grows with the square) runs only if its estimate fits in what is left.
PREPARE_S, CHILD_OVERHEAD_S, ASSUMED_MFU, DATASHEET_PEAK = 90.0, 25.0, 0.35, 989e12


def step_flops(config: dict, length: int, lora_rank: int = 32) -> float:
    """Model FLOPs of one QLoRA step with gradient checkpointing, `length` tokens, all labelled:
    - decoder linears (q, k, v, o, gate, up, down; frozen NF4 base): forward + checkpoint recompute +
      input-gradient backward = 3 x 2 x params per token (no weight gradients);
    - LoRA (r on q/k/v/o): forward, recompute, input and weight gradients = 4 x 2 x params per token;
    - attention, causal: QK^T and PV forward 2 x L^2 x hidden per layer, recompute the same, backward
      twice the forward: 8 x layers x hidden x L^2;
    - LM head (frozen) only over the labelled positions (L - 1): forward + input gradient, 4 x hidden x vocab
      each; the embedding is a lookup, norms and activations are not counted."""
    d, layers, ffn = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * d // config["num_attention_heads"]
    linear = 2 * d * d + 2 * d * kv + 3 * d * ffn
    lora = lora_rank * (2 * (d + d) + 2 * (d + kv))
    per_token = layers * (6 * linear + 8 * lora)
    return per_token * length + 8 * layers * d * length ** 2 + 4 * d * config["vocab_size"] * (length - 1)


def matmul_peak(device: str, n: int = 8192, rounds: int = 10, inner: int = 10) -> float:
    """bf16 matmul FLOP/s on `device`, best of `rounds` (each `inner` matmuls, synchronized)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(rounds):
        sync()
        started = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - started) / inner)
    return 2 * n ** 3 / best


def prepare(device: str, model: str) -> dict:
    """Child process: build the model once (on the GPU), measure the matmul peak, describe the device."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or see the plan with --dry-run")
    model_dir = benchmark_model(model)
    peak = matmul_peak(device, 8192 if device == "cuda" else 1024)
    info = {"model_dir": str(model_dir), "matmul_peak": peak}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "memory_gib": props.total_memory / 2**30}
    return info


def prepare_in_subprocess(device: str, model: str) -> dict:
    """The parent never initializes CUDA, so the measured processes have the whole GPU."""
    done = subprocess.run([sys.executable, __file__, "--prepare", "--device", device, "--model", model],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"preparing failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def planner():
    """(plan_peak, longest_context) from tenfold.plan, or the reason they are unavailable."""
    try:
        from tenfold.plan import longest_context, plan_peak
    except ImportError as error:
        return None, f"tenfold.plan not importable ({error})"
    return (plan_peak, longest_context), ""


def plan_points(model_dir: str, lengths, memory_gib: float, device: str, cap: int | None = None):
    """The fixed lengths, then the planner's longest context (at most `cap`), each without, with offload."""
    functions, missing = planner()
    points = [{"kind": "fixed", "length": n, "offload": off} for n in lengths for off in (False, True)]
    points += [{"kind": "longest", "length": None, "offload": offload} for offload in (False, True)]
    for point in points:
        point |= {"plan_gib": None, "plan_parts": None, "status": missing}
        if functions is None:
            continue
        plan_peak, longest_context = functions
        recipe = paper_recipe(model_dir, point["length"] or max(lengths), offload=point["offload"])
        if point["kind"] == "longest":
            point["length"] = longest_context(recipe, memory_gib, device=device)
            if cap and point["length"] > cap:
                point |= {"kind": f"longest {point['length']:,}, capped", "length": cap}
            recipe = paper_recipe(model_dir, point["length"], offload=point["offload"])
        plan = plan_peak(recipe, point["length"], device=device)
        point |= {"plan_gib": plan["total_gib"], "plan_parts": plan["parts"], "status": ""}
    return points


def estimate_s(point: dict, config: dict, done: list[dict], peak: float) -> float:
    """Seconds the point should take: measured per-process overhead and model FLOP/s of the points so far
    (same offload setting), else the constants above."""
    measured = [r for r in done if r["status"] == "ok"]
    overheads = [r["wall_s"] - r["seconds"] for r in measured]
    alike = [r for r in measured if r["offload"] == point["offload"]]
    achieved = alike[-1]["flops"] / alike[-1]["seconds"] if alike else ASSUMED_MFU * peak
    overhead = sum(overheads) / len(overheads) if overheads else CHILD_OVERHEAD_S
    return overhead + step_flops(config, point["length"]) / achieved


def measure_point(point: dict, config: dict, peak: float, left: float, device: str, model: str,
                  done: list[dict]) -> dict:
    """One point in its own process if its estimate fits in the `left` seconds, else skipped."""
    row = dict(point, seconds=None, peak_gib=None, tokens_per_s=None, mfu=None, wall_s=None)
    if point["length"] is None:  # no planner: no longest context
        return row
    row |= {"flops": step_flops(config, point["length"]), "estimate_s": estimate_s(point, config, done, peak)}
    if row["estimate_s"] > left:
        return row | {"status": f"skipped: needs ~{row['estimate_s']:.0f} s, {max(left, 0):.0f} s left"}
    got = measure_in_subprocess("tenfold", point["length"], True, device, model, point["offload"],
                                timeout=left)
    row |= {"wall_s": got["wall_s"], "status": "oom" if got["oom"] else "timeout" if got.get("timed_out")
            else "ok"}
    if row["status"] == "ok":
        row |= {"seconds": got["seconds"], "peak_gib": got["peak_mem_gb"],
                "tokens_per_s": got["tokens_per_s"], "mfu": row["flops"] / (got["seconds"] * peak)}
    print({k: row[k] for k in ("length", "offload", "plan_gib", "peak_gib", "seconds", "mfu", "status")},
          flush=True)
    return row


def measure_points(points: list[dict], config: dict, peak: float, deadline: float, device: str,
                   model: str) -> list[dict]:
    """The points in order while the budget lasts; on gpu_check.sh's timeout (SIGINT), what was measured."""
    rows = []
    try:
        for point in points:
            rows.append(measure_point(point, config, peak, deadline - time.monotonic(), device, model, rows))
    except KeyboardInterrupt:
        rows.append(dict(point, status="interrupted", seconds=None, peak_gib=None, tokens_per_s=None,
                         mfu=None))
    return rows


def table(rows: list[dict]) -> str:
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    return markdown_table(
        ["point", "offload", "length", "plan GiB", "measured GiB", "measured/plan", "step s", "tokens/s",
         "MFU", "status"],
        [[r["kind"], "yes" if r["offload"] else "no", fmt(r["length"], ","), fmt(r["plan_gib"], ".1f"),
          fmt(r["peak_gib"], ".1f"),
          "" if r["peak_gib"] is None or not r["plan_gib"] else f"{r['peak_gib'] / r['plan_gib']:.2f}",
          fmt(r["seconds"], ".1f"), fmt(r["tokens_per_s"], ".0f"), fmt(r["mfu"], ".1%"), r["status"]]
         for r in rows])


def dry_run(args) -> None:
    """The points, their plans and time estimates, without a GPU (the model's config only)."""
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "llama3-8b":  # its config only: the weights are built on the GPU
            llama_config(shape=LLAMA3_8B).save_pretrained(tmp)
        model_dir = tmp if args.model == "llama3-8b" else str(benchmark_model(args.model))
        config = json.loads((Path(model_dir) / "config.json").read_text())
        memory = args.memory_gib or 80.0
        points = plan_points(model_dir, args.lengths, memory, args.device, args.max_length)
    peak, total = DATASHEET_PEAK, PREPARE_S
    print(f"dry run: {args.model} on {args.device}, {memory:.0f} GiB assumed (--memory-gib), budget "
          f"{args.budget_s:.0f} s; estimates at {ASSUMED_MFU:.0%} of {peak / 1e12:.0f} TFLOP/s, "
          f"{CHILD_OVERHEAD_S:.0f} s per process, {PREPARE_S:.0f} s to prepare")
    for point in points:
        if point["length"] is None:
            print(f"  {point['kind']:8} offload={point['offload']!s:5} length unknown: {point['status']}")
            continue
        seconds = estimate_s(point, config, [], peak)
        total += seconds
        plan = "plan n/a" if point["plan_gib"] is None else f"plan {point['plan_gib']:.1f} GiB"
        fits = "fits" if total <= args.budget_s else "would be skipped"
        print(f"  {point['kind']:8} offload={point['offload']!s:5} length {point['length']:>7,}  {plan:16}"
              f"{step_flops(config, point['length']) / 1e15:7.2f} PFLOP  ~{seconds:4.0f} s  "
              f"(total ~{total:4.0f} s: {fits})")
    if points[0]["status"]:
        print(f"  planner: {points[0]['status']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the points, plans, estimates; no GPU")
    parser.add_argument("--budget-s", type=float, default=440.0, help="stop starting points after this")
    parser.add_argument("--memory-gib", type=float, help="for the planner (default: the GPU's; dry run: 80)")
    parser.add_argument("--lengths", type=lambda s: [int(n) for n in s.split(",")], default=list(LENGTHS))
    parser.add_argument("--max-length", type=int, help="cap on the longest-context point (a CPU try)")
    parser.add_argument("--device", default="cuda", help="cpu: try the script's logic on a small model")
    parser.add_argument("--model", default="llama3-8b", choices=("llama3-8b", "small"))
    parser.add_argument("--no-record", action="store_true", help="print the table, do not append it")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.prepare:
        print(json.dumps(prepare(args.device, args.model)))
        return
    if args.dry_run:
        return dry_run(args)
    deadline = time.monotonic() + args.budget_s
    info = prepare_in_subprocess(args.device, args.model)
    config = json.loads((Path(info["model_dir"]) / "config.json").read_text())
    memory = args.memory_gib or info.get("memory_gib", 24.0)
    points = plan_points(info["model_dir"], args.lengths, memory, args.device, args.max_length)
    rows = measure_points(points, config, info["matmul_peak"], deadline, args.device, args.model)
    measured = "max allocated from the timed step's start" if args.device == "cuda" else "process max RSS"
    notes = (f"- {info.get('gpu', args.device)}, {memory:g} GiB for the planner; model {args.model} (random "
             f"weights), NF4, LoRA r32/a16 q/k/v/o + embed_tokens, bf16, every token labelled; peak = "
             f"{measured}; bf16 matmul peak measured here "
             f"{info['matmul_peak'] / 1e12:.0f} TFLOP/s; MFU counts forward + recompute + input-gradient "
             f"backward of the frozen base, causal attention's L^2 term and the LM head over labelled tokens "
             f"(benchmarks/gpu_check.py step_flops); budget {args.budget_s:.0f} s.")
    if args.no_record:
        print(table(rows) + "\n\n" + notes)
    else:
        record("gpu_check", rows, table(rows), notes)


if __name__ == "__main__":
    main()
