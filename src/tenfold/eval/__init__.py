"""`tenfold eval`: one module per benchmark (needle, passkey, topic, ruler, longbench, infbench, mmlu),
each a plain function `run_<name>(backend, output_dir, **options) -> summary`; backends.py loads the
model, runner.py resumes and batches cases, plots.py draws, suite.py runs them all side by side."""

from importlib import import_module

# The one list of benchmarks, for `tenfold eval NAME` and `tenfold eval all`: name -> its "module:function".
BENCHMARKS = {
    "needle": "tenfold.eval.needle:run_needle",
    "passkey": "tenfold.eval.passkey:run_passkey",
    "topic": "tenfold.eval.topic:run_topic",
    "ruler": "tenfold.eval.ruler:run_ruler",
    "longbench": "tenfold.eval.longbench:run_longbench",
    "infbench": "tenfold.eval.infbench:run_infbench",
    "mmlu": "tenfold.eval.mmlu:run_mmlu",
}


def run_benchmark(name: str, backend, output_dir, **options) -> dict:
    """Run one benchmark by name (imported only now: each pulls its own dependencies); returns its summary."""
    module, function = BENCHMARKS[name].split(":")
    return getattr(import_module(module), function)(backend, output_dir, **options)
