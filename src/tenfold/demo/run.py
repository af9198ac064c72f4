"""`tenfold demo`: ten-fold context on a laptop CPU, end to end, with the three rows that tell the story.

    base (tenfold/toy-llama, native 256 tokens)      needle grid 1x..10x, loss per position, short check
    RoPE base x factor, no training                   the same measurements (`load_backend(rope_theta=...)`)
    toy documents -> tenfold synth (offline) -> tenfold mix (+ plain diaries, short questions)
    -> tenfold train (recipes/demo-cpu.yaml: NF4 + LoRA + RoPE x factor)  -> the same measurements
    -> DIR/report.md (heatmaps, loss curves, table, timings, a sentence per row) and DIR/results.json

Every stage writes into DIR and is skipped when its output is there, so a killed demo started again
goes on where it stopped (the needle predictions, synth and train resume on their own).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import yaml

from tenfold.demo.measure import loss_by_position, needle_grid, short_check
from tenfold.toy import LINE_TOKENS, plain_record, question_record, synth_corpus

BASE_MODEL = "tenfold/toy-llama"
FACTOR = 10  # ten-fold context
RECIPE = "recipes/demo-cpu.yaml"
QUICK = {"conversations": 24, "plain": 12, "short": 12, "needle_samples": 3, "loss_documents": 4,
         "short_check": 20, "max_steps": 8, "depths": [0, 50, 100], "lengths": [1, 5, 10]}


def recipe_path() -> Path:
    path = Path(RECIPE)
    if not path.is_file():  # run from outside the repository: the recipes beside the package's source
        path = Path(__file__).resolve().parents[3] / RECIPE
    if not path.is_file():
        raise FileNotFoundError(f"{RECIPE} not found; run tenfold demo from the repository's root")
    return path


def measure(name: str, backend, out: Path, lengths: list[int], depths: list[float], sizes: dict,
            native: int, title: str, overwrite: bool = False) -> dict:
    grid = needle_grid(backend, out, name, lengths, depths, sizes["needle_samples"], title, overwrite)
    loss = loss_by_position(backend.model, backend.tokenizer, native, FACTOR, sizes["loss_documents"])
    short = short_check(backend, out, f"{name}.short", native, sizes["short_check"], overwrite)
    return {"grid": grid, "loss": loss, "short": short}


def make_training_data(out: Path, model: str, native: int, sizes: dict) -> Path:
    """Long toy documents -> `tenfold synth` (offline generator, every fact asked in its own turn) ->
    `tenfold mix` with long plain diaries and short questions: half long conversations, a third plain
    text, the rest short questions (the recipe's demo: section sets the counts and lengths)."""
    from tenfold.mix import mix
    from tenfold.synth.run import synth, synth_settings
    from tenfold.io import write_jsonl

    data = out / "data"
    mixed = data / "train.jsonl"
    if mixed.is_file():
        return mixed
    shortest, longest = (tokens // LINE_TOKENS for tokens in sizes["conversation_tokens"])
    fewest, most = sizes["facts"]
    corpus = synth_corpus(data / "corpus", sizes["conversations"], shortest, longest, fewest, most, seed=1)
    synthetic = data / "synth.jsonl"
    synth(synth_settings(None, {"corpus": str(corpus), "output": str(synthetic), "generator": "offline",
                                "tasks": sizes["synth_tasks"], "tokenizer": model, "min_tokens": native // 2,
                                "max_tokens": FACTOR * native, "questions_per_chunk": most,
                                "multi_detail_questions": most // 2, "seed": 1}))
    rng = random.Random("demo-data")
    plain = write_jsonl([plain_record(rng.randint(native // LINE_TOKENS, FACTOR * native // LINE_TOKENS - 4), rng, record_id=f"plain-{i}")
                         for i in range(sizes["plain"])], data / "plain.jsonl")
    short = write_jsonl([question_record(rng.randint(0, native // LINE_TOKENS - 6), rng.randint(1, 3), rng.randint(1, 3), rng,
                                         record_id=f"short-{i}") for i in range(sizes["short"])], data / "short.jsonl")
    mix(mixed, [str(synthetic)], [str(short)], [str(plain)], {"synthetic": "all", "instruct": "all", "plain": "all"},
        seed=1, tokenizer=model, max_length=FACTOR * native)
    return mixed


def demo(output_dir: str | Path = "runs/demo", quick: bool = False, rope_factor: float | None = None,
         overwrite: bool = False) -> dict:
    """Run the demo into output_dir; returns what results.json holds. Its predictions are keyed like eval's:
    those made otherwise (another model, RoPE, grid) are refused, or discarded with `overwrite`."""
    from tenfold.generation import load_backend
    from tenfold.models import load_config
    from tenfold.recipe import load_recipe
    from tenfold.train.loop import train

    started, timings = time.perf_counter(), {}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(recipe_path().read_text())
    sizes = {**raw.get("demo", {}), **(QUICK if quick else {})}
    factor = float(rope_factor or raw["rope"]["theta_factor"])
    config = load_config(BASE_MODEL)
    native, theta = config.max_position_embeddings, float(config.rope_theta if hasattr(config, "rope_theta")
                                                          else config.rope_parameters["rope_theta"])
    lengths = [native * k for k in sizes.get("lengths", range(1, FACTOR + 1))]
    depths = sizes.get("depths", [0, 25, 50, 75, 100])
    options = {"max_length": FACTOR * native + 8, "batch_size": 32}
    rows = {}

    def stage(name: str, fn):
        print(f"demo: {name} ...", flush=True)
        t = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t, 1)
        return result

    rows["before"] = stage("base model", lambda: measure(
        "before", load_backend(BASE_MODEL, **options), out / "before", lengths, depths, sizes, native,
        f"base ({BASE_MODEL}, RoPE base {theta:g})", overwrite))
    rows["rope_only"] = stage("RoPE base raised, no training", lambda: measure(
        "rope_only", load_backend(BASE_MODEL, rope_theta=theta * factor, **options), out / f"rope-x{factor:g}",
        lengths, depths, sizes, native, f"RoPE base x{factor:g} ({theta * factor:g}), no training", overwrite))
    data = stage("synth + mix", lambda: make_training_data(out, BASE_MODEL, native, sizes))
    run_dir = out / f"train-x{factor:g}"
    overrides = {"data.train_files": [str(data)], "train.output_dir": str(run_dir), "rope.theta_factor": factor}
    if quick:
        overrides["train.max_steps"] = sizes["max_steps"]
    recipe = load_recipe(recipe_path(), overrides)
    if not (run_dir / "summary.json").is_file():
        stage("train (QLoRA + RoPE)", lambda: train(recipe))
    training = json.loads((run_dir / "summary.json").read_text())
    rows["after"] = stage("after training", lambda: measure(
        "after", load_backend(str(run_dir), **options), out / f"after-x{factor:g}", lengths, depths, sizes, native,
        f"RoPE base x{factor:g} + QLoRA, {training['steps']} steps", overwrite))

    results = {"native_length": native, "training_length": recipe.data.max_length, "rope_factor": factor,
               **{name: row["grid"] for name, row in rows.items()},
               "loss_by_position": {name: row["loss"] for name, row in rows.items()},
               "short_check": {name: row["short"] for name, row in rows.items()},
               "seconds": round(time.perf_counter() - started, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    from tenfold.demo.report import write_report

    write_report(out, results, rows, timings, training, theta, quick)
    return results
