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

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from tenfold.config import load_settings, setting
from tenfold.demo.measure import loss_by_position, needle_grid, short_check
from tenfold.errors import RecipeError, UserError
from tenfold.io import write_atomic, write_error
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
        raise UserError(f"{RECIPE} not found; run tenfold demo from the repository's root")
    return path


@dataclass
class DemoSizes:
    """The demo's sizes: the demo: section of recipes/demo-cpu.yaml (--quick replaces some with QUICK's)."""
    conversations: int = setting(help="long toy documents for `tenfold synth`")
    conversation_tokens: list[int] = setting(help="their shortest and longest length in tokens")
    facts: list[int] = setting(help="fewest and most facts per document")
    synth_tasks: list[str] = setting(help="synth's tasks")
    plain: int = setting(help="long plain diaries (LM loss)")
    short: int = setting(help="short question records (within the native length)")
    needle_samples: int = setting(help="prompts per (length, depth) cell")
    loss_documents: int = setting(help="held-out diaries for the loss-per-position curve")
    short_check: int = setting(help="short questions for the check of the original ability")
    lengths: list[int] = setting(list(range(1, FACTOR + 1)), "needle lengths, in multiples of the native length")
    depths: list[float] = setting([0, 25, 50, 75, 100], "needle depths in percent")
    max_steps: int | None = setting(None, "training steps (default: the recipe's train.max_steps)")

    def __post_init__(self):
        for key in ("conversation_tokens", "facts"):
            if len(getattr(self, key)) != 2:
                raise RecipeError(f"{RECIPE}: demo.{key} is {getattr(self, key)}; give [fewest, most]")


def demo_sizes() -> DemoSizes:
    return load_settings(DemoSizes, "demo", recipe_path())


@dataclass
class DemoSettings:
    """`tenfold demo`: where it writes, the RoPE factor, --quick; its sizes from recipes/demo-cpu.yaml."""
    output_dir: str = setting("runs/demo", "where every stage writes (a rerun goes on where it stopped)")
    quick: bool = setting(False, "a small grid and a few training steps (under 2 minutes)")
    rope_factor: float | None = setting(None, "RoPE base multiplier (default: recipes/demo-cpu.yaml's, x400)")
    overwrite: bool = setting(False, "discard predictions in --output-dir made otherwise (default: refuse them)")
    sizes: DemoSizes = field(default_factory=demo_sizes)


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
    from tenfold.io import write_jsonl
    from tenfold.mix import MixSettings, mix
    from tenfold.synth.run import SynthSettings, synth

    data = out / "data"
    mixed = data / "train.jsonl"
    if mixed.is_file():
        return mixed
    shortest, longest = (tokens // LINE_TOKENS for tokens in sizes["conversation_tokens"])
    fewest, most = sizes["facts"]
    corpus = synth_corpus(data / "corpus", sizes["conversations"], shortest, longest, fewest, most, seed=1)
    synthetic = data / "synth.jsonl"
    synth(SynthSettings(corpus=str(corpus), output=str(synthetic), generator="offline", tasks=sizes["synth_tasks"],
                        tokenizer=model, min_tokens=native // 2, max_tokens=FACTOR * native,
                        questions_per_chunk=most, multi_detail_questions=most // 2, seed=1))
    rng = random.Random("demo-data")
    native_lines, longest_lines = native // LINE_TOKENS, FACTOR * native // LINE_TOKENS
    plain = write_jsonl([plain_record(rng.randint(native_lines, longest_lines - 4), rng, record_id=f"plain-{i}")
                         for i in range(sizes["plain"])], data / "plain.jsonl")
    short = write_jsonl([question_record(rng.randint(0, native_lines - 6), rng.randint(1, 3), rng.randint(1, 3), rng,
                                         record_id=f"short-{i}") for i in range(sizes["short"])], data / "short.jsonl")
    mix(MixSettings(str(mixed), [str(synthetic)], [str(short)], [str(plain)],
                    {"synthetic": "all", "instruct": "all", "plain": "all"}, seed=1, tokenizer=model,
                    max_length=FACTOR * native))
    return mixed


def demo(settings: DemoSettings) -> dict:
    """Run the demo into settings.output_dir; returns what results.json holds. Its predictions are keyed like
    eval's: those made otherwise (another model, RoPE, grid) are refused, or discarded with `overwrite`."""
    from tenfold.generation import load_backend
    from tenfold.models import load_config
    from tenfold.recipe import load_recipe
    from tenfold.train.loop import train

    started, timings = time.perf_counter(), {}
    quick, overwrite = settings.quick, settings.overwrite
    out = Path(settings.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e, "--output-dir") from None
    sizes = dataclasses.asdict(dataclasses.replace(settings.sizes, **QUICK) if quick else settings.sizes)
    factor = float(settings.rope_factor or load_recipe(recipe_path()).rope.theta_factor)
    config = load_config(BASE_MODEL)
    native, theta = config.max_position_embeddings, float(config.rope_theta if hasattr(config, "rope_theta")
                                                          else config.rope_parameters["rope_theta"])
    lengths = [native * k for k in sizes["lengths"]]
    depths = sizes["depths"]
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
    if sizes["max_steps"] is not None:
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
    write_atomic(out / "results.json", json.dumps(results, indent=1) + "\n", "--output-dir")
    from tenfold.demo.report import write_report

    write_report(out, results, timings, training, theta, quick)
    return results
