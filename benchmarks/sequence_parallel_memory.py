"""Ulysses sequence parallelism's memory: one step's resident growth per process at 2 processes against 1.

Launches benchmarks/sequence_parallel_step.py on 2 CPU processes (gloo): each runs one sequence split over
both (Ulysses) and then whole on its own, with the 4-bit base, LoRA and the trained embedding, fp32, gradient
checkpointing; the growth of VmHWM over the step with a fixed glibc mmap threshold (as tests/test_plan.py).

    python benchmarks/sequence_parallel_memory.py [--width 1024] [--layers 4] [--lengths 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import markdown_table, record
from tenfold.toy import build_model

ROOT = Path(__file__).resolve().parent.parent
STEP = str(ROOT / "benchmarks" / "sequence_parallel_step.py")


def measure(model_dir: Path, length: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", "29731", STEP, str(model_dir), str(out), str(length)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True)
    return json.loads(Path(str(out) + ".json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", default="8192")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build_model(vocab_size=32000, hidden_size=args.width, intermediate_size=7 * args.width // 2,
                    num_hidden_layers=args.layers, num_attention_heads=args.width // 64,
                    num_key_value_heads=args.width // 256, rope_theta=10000.0,
                    max_position_embeddings=65536).save_pretrained(tmp)
        for length in [int(n) for n in args.lengths.split(",")]:
            seen = measure(Path(tmp), length, Path(tmp) / f"step{length}")
            rows.append({"width": args.width, "layers": args.layers, "length": length, **seen,
                         "ratio": round(seen["sp_growth"] / seen["whole_growth"], 3)})
    table = markdown_table(["width x layers", "tokens", "1 process (MiB)", "each of 2, Ulysses (MiB)", "ratio"],
                           [[f"{r['width']} x {r['layers']}", r["length"], round(r["whole_growth"] / 2**20),
                             round(r["sp_growth"] / 2**20), r["ratio"]] for r in rows])
    record("sequence_parallel_memory", rows, table, notes=(
        "One step's resident growth (forward + backward, after a warm-up step) of one sequence: whole on one "
        "process vs split over 2 (Ulysses all-to-all around attention). NF4 base, LoRA r32 on q/k/v/o, embedding "
        "trained, fp32, checkpointing, 30% of positions carry loss; both measured in the same 2 processes, the "
        "split step first. Goal: at most 0.6x."))


if __name__ == "__main__":
    main()
