"""`tenfold eval`: one module per benchmark (needle, passkey, topic, ruler, longbench, infbench, mmlu,
longbench_v2),
each a plain function `run_<name>(backend, output_dir, **options) -> summary` with an `Options` dataclass
declaring the options it takes from the command line and from a suite; tenfold.generation loads the model,
runner.py resumes and batches cases, plots.py draws, suite.py runs them all side by side."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import import_module
from typing import Literal

from tenfold.config import check_values, setting

# The one list of benchmarks, for `tenfold eval NAME` and `tenfold eval all`: name -> (its "module:function", help).
# The module's `Options` dataclass holds the function's options, one field each (keyword, type, default, help);
# `tenfold eval NAME` has a flag per field and a suite's `benchmarks: {NAME: {...}}` is checked against them.
# A new benchmark: a module with its function and Options, and one line here.
BENCHMARKS = {
    "needle": ("tenfold.eval.needle:run_needle", "needle in a haystack (paper or original preset)"),
    "passkey": ("tenfold.eval.passkey:run_passkey", "pass key in repeated filler text (length x depth grid)"),
    "topic": ("tenfold.eval.topic:run_topic", "LongChat topic retrieval: accuracy per number of topics"),
    "ruler": ("tenfold.eval.ruler:run_ruler", "RULER synthetic tasks: multi-key/value/query needles, vt, cwe"),
    "longbench": ("tenfold.eval.longbench:run_longbench", "LongBench v1 with the official prompts and metrics"),
    "infbench": ("tenfold.eval.infbench:run_infbench", "InfiniteBench longbook_qa_eng and longbook_sum_eng"),
    "mmlu": ("tenfold.eval.mmlu:run_mmlu", "zero-shot MMLU by the answer letters' next-token scores"),
    "longbench_v2": ("tenfold.eval.longbench_v2:run_longbench_v2",
                     "LongBench v2: 503 long multiple-choice questions, with or without chain of thought"),
}


@dataclass
class EvalSettings:
    """`tenfold eval NAME`: the model, how it is served, and where the results go (the benchmark's own options
    are its Options)."""
    model: str = setting(help="model dir, hub id, tenfold/<name>, a .gguf file (or a dir holding one), or a "
                              "`tenfold train` output")
    output_dir: str = setting(help="where NAME.json, NAME.summary.json and the predictions go")
    backend: Literal["transformers", "openai", "vllm"] = setting("transformers", "what runs the model")
    rope_theta: float | None = setting(None, "override the RoPE base in memory (training-free extension)")
    tokenizer: str | None = setting(None, "tokenizer to count tokens with (default: the model's)")
    max_length: int | None = setting(None, "the longest input to allow (default: the model's config)")
    batch_size: int | None = setting(None, "prompts per generate call (transformers)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = setting(None, "weights' dtype (transformers)")
    chat_template: Literal["tokenizer", "llama-3", "none", "longbench-llama2"] = setting(
        "tokenizer", "the tokenizer's own chat template; the paper code's Llama-3 template string (no trim of the "
                     "message); none (the prompt as it is, as LongBench's pred.py for most models); "
                     "longbench-llama2 (pred.py's [INST]prompt[/INST]) (transformers, vllm)")
    base_url: str | None = setting(None, "OpenAI-compatible endpoint (--backend openai); key from OPENAI_API_KEY")
    overwrite: bool = setting(False, "discard predictions in --output-dir made otherwise (default: refuse them)")


def benchmark(name: str):
    """(function, Options) of a registered benchmark, imported only now: each pulls its own dependencies."""
    module, function = BENCHMARKS[name][0].split(":")
    module = import_module(module)
    return getattr(module, function), module.Options


def benchmark_options(name: str, options: dict, where: str | None = None) -> dict:
    """A benchmark's options checked against its Options (an unknown key names the allowed ones)."""
    return check_values(benchmark(name)[1], options or {}, name, where)


def run_benchmark(name: str, backend, output_dir, overwrite: bool = False, **options) -> dict:
    """Run one benchmark by name with the options its Options allow; returns its summary."""
    function, _ = benchmark(name)
    return function(backend, output_dir, overwrite=overwrite, **benchmark_options(name, options))


def evaluate(name: str, settings: EvalSettings, options: dict) -> dict:
    """`tenfold eval NAME`: load the model as the settings say and run the benchmark on it."""
    from tenfold.generation import load_backend

    s = asdict(settings)
    kept = {"transformers": ("dtype", "batch_size", "max_length", "chat_template"),
            "openai": ("base_url", "max_length", "chat_template"), "vllm": ("max_length", "chat_template")}[
        settings.backend]
    backend = load_backend(settings.model, settings.backend, settings.rope_theta, settings.tokenizer,
                           **{key: s[key] for key in kept if s[key] is not None})
    return run_benchmark(name, backend, settings.output_dir, settings.overwrite, **options)
