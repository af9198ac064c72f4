"""Peak memory and tokens/s of one QLoRA optimizer step against context length: tenfold vs plain HF vs TRL.

Each (path, length) runs in a fresh process limited to 24 GiB of address space; a step that needs
more fails to allocate and is recorded as out of memory. The paths: "baseline", transformers + peft's
QLoRA recipe with gradient checkpointing and the model's own loss from labels; "trl", TRL's
SFTTrainer with its documented long-context settings (checkpointing, its chunked fused LM head,
padding-free; activation offloading on GPUs; see common.trl_train); "tenfold", `tenfold train`'s step.
Same model, NF4 base, LoRA settings, data (every token carries loss: the worst case for tenfold's
label-sparse loss) and bf16 autocast. All paths of one length run back to back. Each path's peaks get
a straight line (growth per token, and the longest context in 24 GiB it projects); `--model
w1024x8-vocab16k` measures where the layers, not the LM head's scratch, set every path's peak.

    python benchmarks/train_memory.py [--quick] [--max-length N] [--lengths N,...]
                                      [--paths baseline,trl,tenfold] [--model w1024x8|w1024x8-vocab16k|small]
    python benchmarks/train_memory.py --gpu [--paths ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import ADDRESS_SPACE_LIMIT, installed_paths, markdown_table, measure_in_subprocess, record

PATHS = ("baseline", "trl", "tenfold")
MODEL_TEXT = {"small": "vocab 128,256, hidden 128, 2 layers, 4 heads",
              "w1024x8": "vocab 128,256, hidden 1,024, MLP 3,584, 8 layers, 8/2 heads",
              "w1024x8-vocab16k": "vocab 16,384, hidden 1,024, MLP 3,584, 8 layers, 8/2 heads"}
KEYS = ("path", "length", "peak_mem_gb", "tokens_per_s", "oom", "offload")


def measured(rows: list[dict]) -> np.ndarray:
    """(lengths, peaks in GiB) of the rows that fit, as two float arrays."""
    return np.array([(r["length"], r["peak_mem_gb"]) for r in rows if not r["oom"]], dtype=float).reshape(-1, 2).T


def fit(rows: list[dict]) -> tuple[float, float, float] | None:
    """(GiB per token, intercept GiB, R^2) of a straight line through the rows that fit; None under 3 points."""
    x, y = measured(rows)
    if len(x) < 3:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    return slope, intercept, 1 - (residual ** 2).sum() / ((y - y.mean()) ** 2).sum()


def linear_fit(rows: list[dict]) -> str:
    if (line := fit(rows)) is None:
        return "too few points to fit"
    slope, intercept, r2 = line
    x, y = measured(rows)
    exponent = (np.polyfit(np.log(x), np.log(np.maximum(y - intercept, 1e-9)), 1)[0] if intercept < y.min()
                else float("nan"))
    projected = f"{int((ADDRESS_SPACE_LIMIT / 2**30 - intercept) / slope):,}" if slope > 0 else "unbounded"
    return (f"{intercept:.2f} GB + {slope * 1024:.3f} GB per 1K tokens = {slope * 2**20:.1f} KiB per token "
            f"(R^2 {r2:.4f}; growth exponent of memory above the intercept {exponent:.2f}); longest context "
            f"in 24 GiB projected from this line: {projected} tokens")


def growth_ratio(rows: list[dict], paths: list[str]) -> str:
    """tenfold's growth per token over each other path's, from the two lines."""
    lines = {p: fit([r for r in rows if r["path"] == p]) for p in paths}
    if lines.get("tenfold") is None:
        return ""
    return "\n".join(f"- growth per token, tenfold/{p}: {lines['tenfold'][0] / line[0]:.2f}x"
                   for p, line in lines.items() if p != "tenfold" and line is not None)


def label(row: dict) -> str:
    return row["path"] + (" + offload" if row.get("offload") else "")


def gpu_section(max_length: int, paths: list[str]) -> tuple[list[dict], str]:
    """A Llama-3-8B-shaped model (random weights) on the GPU: each path, TRL and tenfold also with offload."""
    lengths = [n for n in (8192, 16384, 32768, 65536, 81920, 131072, 196608, 262144) if n <= max_length]
    runs = [(p, offload) for p in paths for offload in ((False,) if p == "baseline" else (False, True))]
    rows = []
    for path, offload in runs:
        for length in lengths:
            row = measure_in_subprocess(path, length, True, device="cuda", model="llama3-8b", offload=offload)
            rows.append({k: row[k] for k in KEYS})
            print(rows[-1], flush=True)
            if row["oom"]:
                break
    table = markdown_table(["path", "length", "peak GB", "tokens/s"], [
        [label(r), r["length"], "OOM" if r["oom"] else f"{r['peak_mem_gb']:.1f}",
         "" if r["oom"] else f"{r['tokens_per_s']:.0f}"] for r in rows])
    return rows, table


def cpu_rows(lengths: list[int], paths: list[str], bf16: bool, model: str) -> list[dict]:
    """Every path at one length back to back, so the machine's load is alike for all of them."""
    rows, out_of_memory = [], set()
    for length in lengths:
        for path in paths:
            if path in out_of_memory:  # longer cannot fit either
                row = {"path": path, "length": length, "peak_mem_gb": None, "tokens_per_s": None, "oom": True}
            else:
                row = measure_in_subprocess(path, length, bf16=bf16, model=model)
            if row["oom"]:
                out_of_memory.add(path)
            rows.append({k: row.get(k, False) for k in KEYS})
            print(rows[-1], flush=True)
    return rows


def comparison_table(rows: list[dict], lengths: list[int], paths: list[str]) -> str:
    """Peak GB and tokens/s of each path per length, and tenfold's ratio to each other path."""
    by = {(r["path"], r["length"]): r for r in rows}
    others = [p for p in paths if p != "tenfold"] if "tenfold" in paths else []
    cell = lambda r, k, f: "OOM" if r["oom"] else format(r[k], f)  # noqa: E731
    ratio = lambda t, o, k: "" if t["oom"] or o["oom"] else f"{t[k] / o[k]:.2f}x"  # noqa: E731
    table_rows = []
    for n in lengths:
        t = by.get(("tenfold", n))
        table_rows.append([n] + [cell(by[(p, n)], "peak_mem_gb", ".2f") for p in paths]
                          + [ratio(t, by[(o, n)], "peak_mem_gb") for o in others]
                          + [cell(by[(p, n)], "tokens_per_s", ".0f") for p in paths]
                          + [ratio(t, by[(o, n)], "tokens_per_s") for o in others])
    header = (["length"] + [f"{p} GB" for p in paths] + [f"tenfold/{o} mem" for o in others]
              + [f"{p} tok/s" for p in paths] + [f"tenfold/{o} speed" for o in others])
    return markdown_table(header, table_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2K and 4K only")
    parser.add_argument("--max-length", type=int, default=131072)
    parser.add_argument("--lengths", help="comma-separated lengths, instead of the default series")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated, of " + ", ".join(PATHS))
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--model", default="w1024x8", choices=list(MODEL_TEXT),
                        help="w1024x8: width 1,024, MLP 3,584, 8 layers, 8/2 heads, vocab 128,256 (default); "
                             "w1024x8-vocab16k: its layers with vocab 16,384, where the layers set every path's "
                             "peak; small: hidden 128")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU section only: a Llama-3-8B-shaped model (needs a CUDA device)")
    args = parser.parse_args()
    paths = [p for p in PATHS if p in args.paths.split(",")]  # in the table's order
    if unknown := set(args.paths.split(",")) - set(PATHS):
        raise SystemExit(f"--paths: unknown {', '.join(sorted(unknown))}; the paths are {', '.join(PATHS)}")
    paths = installed_paths(paths, "train_memory")
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA device")
        rows, table = gpu_section(args.max_length if args.max_length != 131072 else 262144, paths)
        record("train_memory_gpu", rows, table, f"- GPU: {torch.cuda.get_device_name()}; Llama-3-8B shape "
               "(random weights), NF4, LoRA r32/a16 q/k/v/o, embed_tokens trained, bf16; peak = max allocated.")
        return
    lengths = ([int(n) for n in args.lengths.split(",")] if args.lengths else [2048, 4096] if args.quick
               else [n for n in (2048, 4096, 8192, 16384, 32768, 65536, 131072) if n <= args.max_length])
    rows = cpu_rows(lengths, paths, bf16=not args.fp32, model=args.model)
    notes = []
    for path in paths:
        fits = [r["length"] for r in rows if r["path"] == path and not r["oom"]]
        tried_all = len(fits) == len(lengths)
        largest = f"{'>= ' if tried_all else ''}{max(fits) if fits else 0}"
        notes.append(f"- {path}: largest context that fits in 24 GiB: {largest} tokens"
                     f"{' (longest tried)' if tried_all else ''}; memory fit: "
                     f"{linear_fit([r for r in rows if r['path'] == path])}")
    notes.append(growth_ratio(rows, paths))
    record("train_memory", rows, comparison_table(rows, lengths, paths), "\n".join(n for n in notes if n) +
           f"\n- dtype: {'fp32' if args.fp32 else 'bf16 autocast'}; model: Llama, "
           f"{MODEL_TEXT[args.model]}; NF4 base, LoRA r32/a16 on q/k/v/o, embed_tokens trained; one warm-up step at "
           "256 tokens, then one timed step (TRL: its trainer's loop, the second step timed by a callback); "
           "peak = resident peak of the timed step (VmHWM reset before it; fixed glibc mmap threshold).",
           quick=args.quick)


if __name__ == "__main__":
    main()
