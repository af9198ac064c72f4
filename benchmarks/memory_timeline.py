"""Where in tenfold's training step the memory peaks, and how each phase grows with the context.

One step per length, each in a fresh process: a thread samples the resident size every 0.3 ms while
forward and backward hooks on every decoder layer, its attention, its o_proj and its MLP mark the
phases. For the last layer (the first one the backward reaches, when all checkpointed inputs are
still kept) each window between two marks gets its peak above the step's start, at every length, and
its growth per token between the first and the last length: the window that grows most sets the
step's growth. Run it with the fixed glibc mmap threshold (as here) so the resident size follows the
live tensors.

    python benchmarks/memory_timeline.py [--model w1024x8-vocab16k] [--lengths 8192,24576]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXED_MMAP_THRESHOLD, benchmark_model, tenfold_step_fn  # noqa: E402


def resident_bytes() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024


def mark_phases(model, marks: list) -> None:
    """Append (time, name) at the start (">") and end ("<") of each module's forward and backward ("B")."""
    def hook(name):
        return lambda *_args, **_kwargs: marks.append((time.perf_counter(), name))

    last = len(model.get_decoder().layers) - 1
    for i, layer in enumerate(model.get_decoder().layers):
        for part, module in (("layer", layer), ("attn", layer.self_attn), ("o_proj", layer.self_attn.o_proj),
                             ("mlp", layer.mlp)):
            name = f"{part}{i}" if i != last else f"{part}.last"
            module.register_forward_pre_hook(hook(name + ">"))
            module.register_forward_hook(hook(name + "<"))
            module.register_full_backward_pre_hook(hook("B" + name + ">"))
            module.register_full_backward_hook(hook("B" + name + "<"))


def step_windows(model_name: str, length: int) -> dict:
    """{window: peak MiB above the step's start} over the last layer's backward, and the step's peak."""
    step = tenfold_step_fn(benchmark_model(model_name), length)
    marks, samples, running = [], [], True
    vocab = step.loss_model.causal_lm().config.vocab_size
    step(torch.randint(0, vocab, (1, 256), generator=torch.Generator().manual_seed(0)))
    mark_phases(step.loss_model.causal_lm(), marks)
    # the gradient of its output is ready: the backward starts (after the loss's normalization)
    step.loss_model.register_full_backward_pre_hook(lambda *_: marks.append((time.perf_counter(), "backward")))

    def sample():
        while running:
            samples.append((time.perf_counter(), resident_bytes()))
            time.sleep(0.0003)

    input_ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(1))
    start, sampler = resident_bytes(), threading.Thread(target=sample)
    sampler.start()
    step(input_ids)
    running = False
    sampler.join()
    times = [t for t, _ in samples]
    begin = next(i for i, (_, name) in enumerate(marks) if name == "backward")
    end = next(i for i, (_, name) in enumerate(marks) if name == "Blayer.last<")
    windows = {}
    for (a, first), (b, second) in zip(marks[begin:end], marks[begin + 1:end + 1]):
        inside = [r for _, r in samples[bisect.bisect_left(times, a):bisect.bisect_right(times, b)]]
        if inside:
            windows.setdefault(f"{first} -> {second}", (max(inside) - start) / 2**20)
    return {"windows": windows, "step_peak_mib": (max(r for _, r in samples) - start) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="w1024x8-vocab16k",
                        choices=["small", "w1024x8", "w1024x8-vocab16k"])
    parser.add_argument("--lengths", default="8192,24576")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    runs = {}
    for length in lengths:
        done = subprocess.run([sys.executable, __file__, "--child", args.model, str(length)], check=True,
                              capture_output=True, text=True, env=dict(os.environ, **FIXED_MMAP_THRESHOLD))
        runs[length] = json.loads(done.stdout.splitlines()[-1])
    first, last = runs[lengths[0]], runs[lengths[-1]]
    tokens = lengths[-1] - lengths[0]
    print("| window of the last layer's backward | " + " | ".join(f"{n} MiB" for n in lengths)
          + " | growth KiB per token |\n|---|" + "---|" * (len(lengths) + 1))
    for window, mib in first["windows"].items():
        if window in last["windows"]:
            cells = " | ".join(f"{runs[n]['windows'].get(window, float('nan')):.0f}" for n in lengths)
            print(f"| {window} | {cells} | {(last['windows'][window] - mib) * 1024 / tokens:.1f} |")
    growth = (last["step_peak_mib"] - first["step_peak_mib"]) * 1024 / tokens
    peaks = ", ".join(f"{runs[n]['step_peak_mib']:.0f} MiB at {n}" for n in lengths)
    print(f"\nstep peak above its start: {peaks}; growth {growth:.1f} KiB per token")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(step_windows(sys.argv[2], int(sys.argv[3]))))
    else:
        main()
