"""`tenfold eval all`: every model of a suite on every benchmark, and one table comparing them.

The suite is the `eval:` section of a YAML file (a recipe may carry it):

    eval:
      models:                      # column name -> load_backend arguments
        base: {model: meta-llama/Meta-Llama-3-8B-Instruct}
        rope-only: {model: meta-llama/Meta-Llama-3-8B-Instruct, rope_theta: 200000000}
        tenfold: {model: runs/llama3-80k}
      backend_options: {max_length: 131072}   # optional, for every model
      benchmarks:                  # benchmark -> its function's keyword arguments
        needle: {preset: paper}
        topic: {}
        longbench: {preset: paper}

Each model's results go to OUTPUT_DIR/<model>/ (each benchmark resumes from its predictions file);
the table goes to OUTPUT_DIR/summary.md and summary.json: each model's native and training lengths,
one row per benchmark score, plus a row per length / group / task where a benchmark reports them, one
column per model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tenfold.config import read_recipe_file, setting
from tenfold.errors import RecipeError
from tenfold.eval import BENCHMARKS, benchmark_options, run_benchmark
from tenfold.eval.runner import model_lengths
from tenfold.generation import load_backend
from tenfold.io import write_atomic

# per-benchmark detail rows; "categories" (LongBench, MMLU) and "scores" (InfiniteBench's tasks) are what the
# paper reported too
BREAKDOWNS = ("by_length", "by_num_topics", "by_category", "by_task", "by_dataset", "by_difficulty", "categories")


@dataclass
class SuiteSettings:
    """`tenfold eval all`: run_suite's arguments."""
    suite: str = setting(help="YAML with an eval: section (models, benchmarks)")
    output_dir: str = setting(help="OUTPUT_DIR/<model>/ for each model's results; summary.md and summary.json")
    overwrite: bool = setting(False, "discard predictions in --output-dir made otherwise (default: refuse them)")


def load_suite(suite: str | Path | dict) -> dict:
    if isinstance(suite, dict):
        raw, source = suite, "suite"
    else:
        raw, source = read_recipe_file(suite, "suite"), str(suite)
    section = raw.get("eval", raw)
    models, benchmarks = section.get("models"), section.get("benchmarks")
    if not isinstance(models, dict) or not models or not isinstance(benchmarks, dict) or not benchmarks:
        raise RecipeError(f"{source}: the eval section needs `models` (name -> {{model: ...}}) and `benchmarks` "
                          f"(name -> options) mappings")
    unknown = [name for name in benchmarks if name not in BENCHMARKS]
    if unknown:
        raise RecipeError(f"{source}: unknown benchmark(s) {', '.join(unknown)}; use {', '.join(BENCHMARKS)}")
    for name, spec in models.items():
        if not isinstance(spec, dict) or "model" not in spec:
            raise RecipeError(f"{source}: model {name!r} needs a `model:` key (path, hub id or tenfold/<name>)")
    benchmarks = {name: benchmark_options(name, options, source) for name, options in benchmarks.items()}
    return {"models": models, "benchmarks": benchmarks, "backend_options": section.get("backend_options") or {}}


def summary_rows(benchmark: str, summary: dict) -> dict[str, float]:
    """The table rows one benchmark summary gives: its score, then its breakdowns."""
    label = f"{benchmark} ({summary.get('preset') or summary.get('scorer', 'score')})"
    rows = {label: summary["score"]}
    for key in BREAKDOWNS:
        for part, value in (summary.get(key) or {}).items():
            if isinstance(value, (int, float)):
                rows[f"{benchmark} {key.removeprefix('by_').replace('_', ' ')} {part}"] = value
    if "effective_length" in summary:  # RULER's: the longest length scoring above its threshold
        rows[f"{benchmark} effective length (> {summary.get('threshold')})"] = summary["effective_length"]
    if benchmark == "infbench":
        rows.update({f"{benchmark} {task}": value for task, value in (summary.get("scores") or {}).items()})
    return rows


def reported_rows(benchmark: str, summary: dict) -> dict[str, float]:
    """The paper's reported numbers for this summary's model, on the rows summary_rows gives (none if it
    reported none): the measured and the reported value side by side."""
    reported = summary.get("paper_reported")
    if not reported:
        return {}
    score = reported.get("avg", reported.get("score"))
    as_summary = {**{k: v for k, v in summary.items() if k in ("preset", "scorer")}, **reported, "score": score}
    return {row: value for row, value in summary_rows(benchmark, as_summary).items() if value is not None}


def markdown_table(columns: list[str], rows: dict[str, dict[str, float]]) -> str:
    def cell(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"

    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {row} | " + " | ".join(cell(values.get(c)) for c in columns) + " |" for row, values in rows.items()]
    return "\n".join(lines) + "\n"


def run_suite(suite: str | Path | dict, output_dir: str | Path, overwrite: bool = False) -> dict:
    """Run every benchmark for every model; returns {"models", "benchmarks", "rows", "summaries"}.
    Predictions in output_dir made otherwise are refused, or discarded with `overwrite`."""
    settings = load_suite(suite)
    out = Path(output_dir)
    rows: dict[str, dict[str, float]] = {}
    summaries: dict[str, dict[str, dict]] = {}
    for model_name, spec in settings["models"].items():
        spec = {**settings["backend_options"], **spec}
        backend = load_backend(spec.pop("model"), spec.pop("backend", "transformers"), spec.pop("rope_theta", None),
                               spec.pop("tokenizer", None), **spec)
        for key, length in model_lengths(backend).items():
            rows.setdefault(key.replace("_", " "), {})[model_name] = length
        for benchmark, options in settings["benchmarks"].items():
            summary = run_benchmark(benchmark, backend, out / model_name, overwrite=overwrite, **options)
            summaries.setdefault(benchmark, {})[model_name] = summary
            for row, value in summary_rows(benchmark, summary).items():
                rows.setdefault(row, {})[model_name] = value
            for row, value in reported_rows(benchmark, summary).items():
                rows.setdefault(row, {})[f"{model_name} (paper reported)"] = value
        del backend  # one model in memory at a time
    columns = [c for name in settings["models"] for c in (name, f"{name} (paper reported)")
               if c == name or any(c in values for values in rows.values())]
    table = {"models": list(settings["models"]), "columns": columns, "benchmarks": list(settings["benchmarks"]),
             "rows": rows, "summaries": summaries}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "summary.json", json.dumps(table, indent=1, default=str) + "\n", "--output-dir")
    write_atomic(out / "summary.md", markdown_table(columns, rows), "--output-dir")
    return table
