#!/usr/bin/env bash
# Two or more GPUs, about 10 minutes: the multi-GPU modes of `tenfold train` against one GPU, from the
# README's commands. Not run by any test; nothing here has been run yet (the project has had no GPU machine).
#
#   bash benchmarks/gpu_check_multi.sh [N_GPUS]        (default: every visible GPU)
#
# 1. DDP, FSDP2 (recipes/accelerate/fsdp2.yaml), Ulysses sequence parallel (train.sequence_parallel N) and,
#    if DeepSpeed is installed, ZeRO-2 and ZeRO-3 (recipes/accelerate/deepspeed-zero{2,3}.yaml), each on the tiny recipe
#    (4-bit base, bf16): the adapter's largest difference from the 1-GPU run and each run's peak memory.
# 2. One long sequence (LONG tokens, default 65536) on the tiny model with the recipe's checkpointing:
#    peak GPU memory per process on 1 GPU and split over SP (default 2) with sequence parallel (summary.json).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then  # PYTHON given wins; else the active venv's python, else ./.venv's
    PYTHON=python; if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
fi
N="${1:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')}"
if [ "$N" -lt 2 ]; then echo "gpu_check_multi: needs 2 or more GPUs, found $N" >&2; exit 1; fi
OUT="${OUT:-runs/gpu_check_multi}"
rm -rf "$OUT"; mkdir -p "$OUT"
COMMON=(--recipe recipes/tiny-cpu.yaml --train.mixed_precision bf16 --model.dtype auto --train.max_steps 4
        --train.batch_size $((2 * N)) --train.micro_batch_size 2 --train.save_every 2 --data.max_length 1024)
train() {  # name, launcher args..., -- , extra train args...
    local name="$1"; shift
    local launcher=(); while [ "$1" != "--" ]; do launcher+=("$1"); shift; done; shift
    echo "== $name"
    timeout 300 "${launcher[@]}" -m tenfold.cli train "${COMMON[@]}" --train.output_dir "$OUT/$name" "$@" \
        > "$OUT/$name.log" 2>&1 || { echo "$name FAILED (log: $OUT/$name.log)"; tail -5 "$OUT/$name.log"; }
}
train one "$PYTHON" --
train ddp "$PYTHON" -m accelerate.commands.launch --num_processes "$N" --
train fsdp2 "$PYTHON" -m accelerate.commands.launch --config_file recipes/accelerate/fsdp2.yaml --num_processes "$N" --
SP="${SP:-2}"  # the sequence-parallel degree: it must divide the tiny model's attention heads
train sp "$PYTHON" -m accelerate.commands.launch --num_processes "$SP" -- --train.sequence_parallel "$SP" \
    --train.batch_size 2
if "$PYTHON" -c "import deepspeed" 2>/dev/null; then
    train zero2 "$PYTHON" -m accelerate.commands.launch --config_file recipes/accelerate/deepspeed-zero2.yaml \
        --num_processes "$N" -- --train.save_every 0
    train zero3 "$PYTHON" -m accelerate.commands.launch --config_file recipes/accelerate/deepspeed-zero3.yaml \
        --num_processes "$N" -- --train.save_every 0
fi
train one_sp_ref "$PYTHON" -- --train.batch_size 2
LONG="${LONG:-65536}"
LONG_ARGS=(--data.max_length "$LONG" --train.max_steps 1 --train.batch_size 1 --train.micro_batch_size 1
           --train.save_every 0 --data.train_files "$OUT/long.jsonl")
"$PYTHON" - "$OUT/long.jsonl" "$LONG" <<'PY'
import json, sys
words = " ".join(f"w{i % 997}" for i in range(int(sys.argv[2]) * 2))  # more than LONG tokens; truncated
open(sys.argv[1], "w").write(json.dumps({"id": "long", "source": "gpu_check", "text": words}) + "\n")
PY
train long_one "$PYTHON" -- "${LONG_ARGS[@]}"
train long_sp "$PYTHON" -m accelerate.commands.launch --num_processes "$SP" -- "${LONG_ARGS[@]}" \
    --train.sequence_parallel "$SP"
"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from safetensors.torch import load_file
out = Path(sys.argv[1])
def adapter(name):
    path = out / name / "adapter" / "adapter_model.safetensors"
    return load_file(path) if path.is_file() else None
def summary(name):
    path = out / name / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}
for name, ref in [("ddp", "one"), ("fsdp2", "one"), ("zero2", "one"), ("zero3", "one"), ("sp", "one_sp_ref")]:
    a, b = adapter(name), adapter(ref)
    if a is None or b is None:
        print(f"{name:8} no adapter (see {out}/{name}.log)" if (out / f"{name}.log").exists() else f"{name:8} not run")
        continue
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in b)
    s = summary(name)
    print(f"{name:8} vs {ref}: max |adapter diff| {diff:.2e}  peak {s.get('peak_memory_gb')} GB  {s.get('distributed')}")
for name in ("long_one", "long_sp"):
    s = summary(name)
    print(f"{name:8} peak {s.get('peak_memory_gb')} GB per process, {s.get('tokens_seen')} tokens, {s.get('processes')} processes")
PY
