#!/usr/bin/env bash
# One GPU, under 8 minutes: tenfold's QLoRA step on a Llama-3-8B-shaped model at 16K, 32K, 80K and the
# planner's longest context, with and without activation offload; appends its table to BENCHMARKS.md.
# What it measures and how: benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--budget-s 440] [--memory-gib N]
#
# gpu_check.py starts no point past --budget-s (default 440 s) and then records what it measured; this
# wrapper's timeout is the hard stop (SIGINT at GPU_CHECK_TIMEOUT_S, default 470 s: the script still records
# what it has; SIGKILL 10 s later). Raise both together for a longer run.
# Needs tenfold's core dependencies with a CUDA torch: torch, transformers, peft, bitsandbytes, accelerate,
# datasets, safetensors, pyyaml (`pip install -e .`; no internet on the node: README, "On a GPU node with no
# internet"). flash-attn is used when installed and not required.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then  # PYTHON given wins; else the active venv's python, else ./.venv's
    PYTHON=python; if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
fi
MISSING=$("$PYTHON" - <<'PY'
import importlib.util
names = ["tenfold", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "safetensors", "yaml"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
PY
)
if [ -n "$MISSING" ]; then
    echo "gpu_check: not importable with $PYTHON: $MISSING; install with: pip install -e . (offline: README," \
         "\"On a GPU node with no internet\")" >&2
    exit 1
fi
exec timeout --signal=INT --kill-after=10 "${GPU_CHECK_TIMEOUT_S:-470}" "$PYTHON" benchmarks/gpu_check.py "$@"
