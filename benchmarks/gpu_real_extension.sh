#!/usr/bin/env bash
# One GPU, under 10 minutes: SmolLM2-135M-Instruct (native 8,192 tokens, RoPE base 100,000) extended towards
# 80K with the paper's recipe (recipes/llama3-8b-instruct-80k.yaml: NF4 base, LoRA r32 on q/k/v/o, embeddings
# trained, RoPE base x400 = 40,000,000), on data `tenfold synth` makes from real prose, then the needle grid
# (paper preset, 8K..80K x 5 depths) for the base, the RoPE-only row and the trained, merged model.
#
#   bash benchmarks/gpu_real_extension.sh [--dry-run]
#
# Prose: Python's reference documentation (pydoc_data.topics, ships with CPython): LONG_DOCS documents, each
# the topics in its own seeded order, cut to ~MAX_TOKENS tokens; the same prose is the needle's haystack.
# Settings by environment: OUT (runs/gpu-real-extension), STEPS (60), LENGTH (81920), MAX_TOKENS (78000),
# LONG_DOCS (24), NEEDLE_LENGTHS (8000,16000,...,80000), NEEDLE_DEPTHS (0,25,50,75,100). Every stage is skipped
# when its output is there (synth, train and eval resume on their own), so a killed run started again goes on.
# --dry-run prints the commands without running them (no GPU needed). Not yet run on a GPU by its author.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then  # PYTHON given wins; else the active venv's python, else ./.venv's
    PYTHON=python; if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
fi
TENFOLD=("$PYTHON" -m tenfold.cli)
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT="${OUT:-runs/gpu-real-extension}"
STEPS="${STEPS:-60}"
LENGTH="${LENGTH:-81920}"
MAX_TOKENS="${MAX_TOKENS:-78000}"
LONG_DOCS="${LONG_DOCS:-24}"
NEEDLE_LENGTHS="${NEEDLE_LENGTHS:-8000,16000,24000,32000,40000,48000,56000,64000,72000,80000}"
NEEDLE_DEPTHS="${NEEDLE_DEPTHS:-0,25,50,75,100}"
NEEDLE_MAX=$(( ${NEEDLE_LENGTHS##*,} + 512 ))

run() {  # echo, then run unless --dry-run; each stage's seconds go to the log
    echo "+ $*"
    [ "$DRY" = 1 ] && return 0
    local started=$SECONDS
    "$@"
    echo "  ($(( SECONDS - started )) s)"
}

if [ "$DRY" = 0 ]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_real_extension: no CUDA GPU')"
fi
mkdir -p "$OUT"
started_all=$SECONDS

# The model: tenfold's shipped name when this checkout has it, else a folder converted once from the GGUF.
MODEL=$("$PYTHON" -c "import sys; sys.path.insert(0, 'benchmarks'); import real_model; print(real_model.MODEL)")
THETA=$("$PYTHON" -c "from transformers import AutoConfig; from tenfold.rope import current_rope; \
from tenfold.models import resolve_model_path as r; \
print(current_rope(AutoConfig.from_pretrained(r('$MODEL')))['rope_theta'])")
NEW_THETA=$("$PYTHON" -c "print(float('$THETA') * 400)")
echo "gpu_real_extension: model $MODEL, RoPE base $THETA -> $NEW_THETA, training length $LENGTH, $STEPS steps"

# Long documents and the haystack from the prose that ships with Python.
"$PYTHON" - "$OUT" "$LONG_DOCS" <<'EOF'
import random, sys
from pathlib import Path
import pydoc_data.topics

out, n = Path(sys.argv[1]), int(sys.argv[2])
topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
(out / "corpus").mkdir(parents=True, exist_ok=True)
(out / "haystack.txt").write_text("\n\n".join(topics))
for i in range(n):
    order = topics[:]
    random.Random(i).shuffle(order)
    (out / "corpus" / f"pydoc-{i:02d}.txt").write_text("\n\n".join(order)[:300_000])  # ~73K SmolLM2 tokens
plain = [{"id": f"pydoc-plain-{i}", "source": "pydoc_data.topics", "text": t} for i, t in enumerate(topics)]
import json
(out / "plain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in plain))
EOF

[ -s "$OUT/synth.jsonl" ] || run "${TENFOLD[@]}" synth --corpus "$OUT/corpus" --output "$OUT/synth.jsonl" \
    --generator offline --tokenizer "$MODEL" --min-tokens 16000 --max-tokens "$MAX_TOKENS"
[ -s "$OUT/train.jsonl" ] || run "${TENFOLD[@]}" mix --output "$OUT/train.jsonl" --synthetic "$OUT/synth.jsonl" \
    --plain "$OUT/plain.jsonl" --counts synthetic=all,instruct=0,plain=all --tokenizer "$MODEL" --max-length "$LENGTH"
run "${TENFOLD[@]}" plan --recipe recipes/llama3-8b-instruct-80k.yaml --model.name "$MODEL" \
    --rope.theta "$NEW_THETA" --data.max_length "$LENGTH" --gpu-memory 80
run "${TENFOLD[@]}" train --recipe recipes/llama3-8b-instruct-80k.yaml --model.name "$MODEL" \
    --rope.theta "$NEW_THETA" --data.max_length "$LENGTH" --data "$OUT/train.jsonl" --max-steps "$STEPS" \
    --train.batch_size 1 --train.learning_rate 1e-4 --train.save_every 50 --output-dir "$OUT/train"
[ -s "$OUT/merged/config.json" ] || run "${TENFOLD[@]}" merge "$OUT/train" --output-dir "$OUT/merged"

needle() {  # ROW MODEL [extra eval flags]
    local row=$1 model=$2
    shift 2
    run "${TENFOLD[@]}" eval needle --model "$model" --output-dir "$OUT/needle/$row" --preset paper \
        --lengths "$NEEDLE_LENGTHS" --depths "$NEEDLE_DEPTHS" --haystack "$OUT/haystack.txt" \
        --max-length "$NEEDLE_MAX" --batch-size 4 "$@"
}
needle base "$MODEL"
needle rope-x400 "$MODEL" --rope-theta "$NEW_THETA"
needle trained "$OUT/merged"

if [ "$DRY" = 0 ]; then
    "$PYTHON" - "$OUT" "$(( SECONDS - started_all ))" <<'EOF'
import json, sys
from pathlib import Path
out, seconds = Path(sys.argv[1]), sys.argv[2]
print(f"gpu_real_extension: {seconds} s in all; needle (rouge-L recall) by length:")
for row in ("base", "rope-x400", "trained"):
    summary = json.loads((out / "needle" / row / "needle.summary.json").read_text())
    lengths = {k: summary["model"].get(k) for k in ("native_length", "training_length")}
    print(f"  {row:10s} mean {summary['score']:.2f}  " + "  ".join(f"{int(k) // 1000}K {v:.2f}"
          for k, v in summary["by_length"].items()) + f"  {lengths}")
EOF
fi
