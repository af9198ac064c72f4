"""The demo's report.md and loss.png, written only from the numbers the run measured."""

from __future__ import annotations

import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from tenfold.eval.ruler import THRESHOLD, effective_length  # noqa: E402
from tenfold.io import write_atomic  # noqa: E402

LABELS = {"before": "base", "rope_only": "RoPE base raised, no training", "after": "RoPE base raised + QLoRA"}


def needle_at(grid: list[dict], length: int) -> float:
    cells = [c["accuracy"] for c in grid if c["length"] == length]
    return sum(cells) / len(cells)


def loss_plot(results: dict, path: Path, native: int) -> Path:
    # tenfold.eval.plots.line_plot draws accuracies on a fixed 0..1 axis; a loss curve needs its own axis.
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, losses in results["loss_by_position"].items():
        ax.plot(range(1, len(losses) + 1), losses, marker="o", label=LABELS[name])
    ax.axvline(1.5, color="#1f4fd1", linestyle="--", linewidth=1.5, label=f"native length ({native} tokens)")
    ax.set_xticks(range(1, len(losses) + 1), [f"{k}x" for k in range(1, len(losses) + 1)])
    ax.set_xlabel(f"position in the document (bins of {native} tokens)")
    ax.set_ylabel("language-model loss (nats per token)")
    ax.set_title("Loss per position on held-out toy documents")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary_row(results: dict, name: str) -> dict:
    grid, loss, native = results[name], results["loss_by_position"][name], results["native_length"]
    longest = max(c["length"] for c in grid)
    needle_by_length = {length: 100 * needle_at(grid, length) for length in sorted({c["length"] for c in grid})}
    return {"needle_1x": needle_at(grid, native), "needle_10x": needle_at(grid, longest),
            "effective_length": effective_length(needle_by_length),
            "needle_mean": sum(c["accuracy"] for c in grid) / len(grid), "needle_min": min(c["accuracy"] for c in grid),
            "loss_1x": loss[0], "loss_10x": loss[-1], "loss_max": max(loss), "short": results["short_check"][name]}


def sentences(rows: dict, factor: float, steps: int) -> dict:
    b, r, a = rows["before"], rows["rope_only"], rows["after"]
    fails = b["needle_10x"] <= 0.2 and b["loss_10x"] - b["loss_1x"] >= 1.0
    return {
        "before": f"The base finds {b['needle_1x']:.0%} of needles at its native length but {b['needle_10x']:.0%} at "
                  f"ten times it, and its loss climbs from {b['loss_1x']:.2f} to {b['loss_10x']:.2f} nats: "
                  + ("it does not work past its native context." if fails else
                     "it degrades past its native context, less than the targets ask."),
        "rope_only": f"Raising the RoPE base x{factor:g} alone gives {r['needle_1x']:.0%} at 1x and "
                     f"{r['needle_10x']:.0%} at 10x, with a loss of {r['loss_1x']:.2f} nats at 1x and "
                     f"{r['loss_10x']:.2f} at 10x ({r['loss_1x'] - b['loss_1x']:+.2f} against the base's 1x): "
                     + ("it stops the blow-up but costs accuracy at every length." if r["loss_1x"] - b["loss_1x"] > 0.1
                        else "at this scale it already does most of the job."),
        "after": f"After {steps} steps of QLoRA with the raised base the worst needle cell is {a['needle_min']:.0%}, "
                 f"the loss stays between {min(a['loss_1x'], a['loss_10x']):.2f} and {a['loss_max']:.2f} nats "
                 f"({a['loss_max'] - b['loss_1x']:+.2f} at worst against the base's 1x), and the short check reads "
                 f"{a['short']:.2f} against the base's {b['short']:.2f}.",
    }


def targets(rows: dict) -> list[tuple[str, str, bool]]:
    b, r, a = rows["before"], rows["rope_only"], rows["after"]
    return [
        ("base: needle at 1x >= 95%", f"{b['needle_1x']:.0%}", b["needle_1x"] >= 0.95),
        ("base: needle at 10x <= 20%", f"{b['needle_10x']:.0%}", b["needle_10x"] <= 0.20),
        ("base: loss at 10x >= 1 nat above 1x", f"{b['loss_10x'] - b['loss_1x']:+.2f}",
         b["loss_10x"] - b["loss_1x"] >= 1),
        ("after: needle >= 90% in every cell", f"min {a['needle_min']:.0%}", a["needle_min"] >= 0.90),
        ("after: needle at 1x >= 95% (mean over depths)", f"{a['needle_1x']:.0%}", a["needle_1x"] >= 0.95),
        ("after: loss in every bin <= base's 1x + 0.1", f"max {a['loss_max']:.2f} vs {b['loss_1x'] + 0.1:.2f}",
         a["loss_max"] <= b["loss_1x"] + 0.1),
        ("after: loss below RoPE-only's at 1x and 10x", f"{a['loss_1x']:.2f}/{a['loss_10x']:.2f} vs "
         f"{r['loss_1x']:.2f}/{r['loss_10x']:.2f}", a["loss_1x"] < r["loss_1x"] and a["loss_10x"] < r["loss_10x"]),
        ("after: short check >= base's - 0.05", f"{a['short']:.2f} vs {b['short']:.2f}",
         a["short"] >= b["short"] - 0.05),
    ]


def write_report(out: Path, results: dict, timings: dict, training: dict, theta: float, quick: bool) -> Path:
    native, factor, trained = results["native_length"], results["rope_factor"], results["training_length"]
    loss_plot(results, out / "loss.png", native)
    numbers = {name: summary_row(results, name) for name in LABELS}
    said = sentences(numbers, factor, training["steps"])
    pictures = {"before": "before/before.png", "rope_only": f"rope-x{factor:g}/rope_only.png",
                "after": f"after-x{factor:g}/after.png"}
    depths = len({c["depth"] for c in results["before"]})
    lines = [
        "# tenfold demo: ten-fold context on a CPU", "",
        f"Base `tenfold/toy-llama`: native length {native:,} tokens, RoPE base {theta:g}. Extension: RoPE base "
        f"x{factor:g} ({theta * factor:g}; the paper's factor is x400) and QLoRA through `tenfold train` with "
        f"`recipes/demo-cpu.yaml`, on data from `tenfold synth` (offline generator) and `tenfold mix`; training "
        f"length {trained:,} tokens per sequence."
        + (" **Quick run (`--quick`): a small grid and a few training steps; the numbers show the pipeline works, "
           "not what the method reaches.**" if quick else ""), "",
        "## Needle in a haystack (exact match; depth down the side, length in tokens along the bottom)", "",
        "| base | RoPE base raised, no training | RoPE base raised + QLoRA |", "|---|---|---|",
        "| " + " | ".join(f"![{LABELS[n]}]({pictures[n]})" for n in LABELS) + " |", "",
        "## Loss per position", "", "![loss per position](loss.png)", "",
        "## The three rows", "",
        "| row | needle 1x | needle 10x | grid mean | worst cell | effective length | loss 1x | loss 10x | worst bin "
        "| short check |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, n in numbers.items():
        effective = f"{n['effective_length']:,}" if n["effective_length"] else "none"
        lines.append(f"| {LABELS[name]} | {n['needle_1x']:.2f} | {n['needle_10x']:.2f} | {n['needle_mean']:.2f} | "
                     f"{n['needle_min']:.2f} | {effective} | {n['loss_1x']:.2f} | {n['loss_10x']:.2f} | "
                     f"{n['loss_max']:.2f} | {n['short']:.2f} |")
    lines += ["", f"Effective length: the longest needle length whose mean score is above {THRESHOLD} of 100, "
              "RULER's rule (its threshold: Llama-2-7B-chat's score at 4K).", "",
              *[f"- **{LABELS[name]}**: {text}" for name, text in said.items()], "",
              "Loss per bin (nats per token, bins of the native length):", "",
              "| row | " + " | ".join(f"{k}x" for k in range(1, len(results["loss_by_position"]["before"]) + 1)) + " |",
              "|---|" + "---|" * len(results["loss_by_position"]["before"])]
    lines += [f"| {LABELS[name]} | " + " | ".join(f"{v:.2f}" for v in losses) + " |"
              for name, losses in results["loss_by_position"].items()]
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {what} | {value} | {'yes' if ok else 'no'} |" for what, value, ok in targets(numbers)]
    lines += ["", "## Timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()]
    lines += [f"| **total** | **{results['seconds']:.0f}** |", "",
              f"Training: {training['steps']} steps, {training['tokens_seen']:,} tokens, "
              f"loss {training['first_loss']:.3f} -> {training['final_loss']:.3f}, "
              f"{training.get('tokens_per_s') or 0:.0f} tokens/s. Machine: "
              f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
              f"Needle grid: {len(results['before'])} cells ({depths} depths).", "",
              "Raw numbers: `results.json`; every needle prediction: `*/*.predictions.jsonl`; the training run: "
              f"`train-x{factor:g}/summary.json`.", ""]
    path = out / "report.md"
    write_atomic(path, "\n".join(lines), "--output-dir")
    return path
