"""What the training benchmarks share: the benchmark model, one optimizer step on each path, recording.

The model is Llama-architecture with Llama-3's vocabulary (128,256) and a small hidden size, so the
LM head and the loss dominate as they do at long context; weights are random (no download).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL_DIR = ROOT / "benchmarks" / ".cache" / "llama-128k-vocab"
ADDRESS_SPACE_LIMIT = 24 * 2**30  # "fits in 24 GiB": a step that needs more fails to allocate


LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8)


def build_model(path: Path = MODEL_DIR, hidden: int = 128, layers: int = 2, heads: int = 4,
                shape: dict | None = None) -> Path:
    """Random weights saved once; `shape` (e.g. LLAMA3_8B) replaces the small default sizes."""
    if (path / "config.json").is_file():
        return path
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = shape or dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=heads)
    config = LlamaConfig(vocab_size=128_256, max_position_embeddings=8192, rope_theta=500_000.0,
                         tie_word_embeddings=False, **sizes)
    torch.manual_seed(0)
    device = "cuda" if shape and torch.cuda.is_available() else "cpu"  # 8B random init is minutes on a CPU
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if shape else torch.float32)
    model.save_pretrained(path)
    return path


def tenfold_step_fn(model_dir: Path, length: int, bf16: bool, device: str = "cpu", offload: bool = False):
    """tenfold train's step: QLoRA model from tenfold's loader, label-sparse loss, AdamW."""
    from tenfold.recipe import load_recipe
    from tenfold.train.loss import CausalLMLoss
    from tenfold.train.model import load_model_for_training

    recipe = load_recipe(ROOT / "recipes" / "llama3-8b-instruct-80k.yaml", {
        "model.name": str(model_dir), "model.dtype": "auto", "train.mixed_precision": "bf16" if bf16 else "no",
        "data.max_length": length, "model.offload_activations": offload})
    model, _ = load_model_for_training(recipe, torch.device(device))
    from tenfold.train.loop import offload_activations
    loss_model = CausalLMLoss(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)

    def step(input_ids):
        input_ids = input_ids.to(device)
        weights = torch.ones_like(input_ids, dtype=torch.float32)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16), offload_activations(recipe, torch.device(device)):
            loss = loss_model(input_ids, torch.ones_like(input_ids), weights) / weights[:, 1:].sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def baseline_step_fn(model_dir: Path, length: int, bf16: bool, device: str = "cpu", offload: bool = False):
    """The plain path: transformers + peft's QLoRA recipe, the model's own loss from labels."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.bfloat16 if bf16 else torch.float32
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=dtype,
                                                 attn_implementation="sdpa", device_map={"": device})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             modules_to_save=["embed_tokens"]))
    model.train()  # from_pretrained returns eval mode, where transformers skips gradient checkpointing
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)

    saved_on_cpu = torch.autograd.graph.save_on_cpu(pin_memory=device == "cuda") if offload else None

    def step(input_ids):
        input_ids = input_ids.to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16), saved_on_cpu or contextlib.nullcontext():
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def measure_step(path: str, length: int, bf16: bool, device: str = "cpu", model: str = "small",
                 offload: bool = False) -> dict:
    """One warm-up step at 256 tokens, then one timed step at `length`; peak memory of this process
    (max RSS on the CPU, max allocated on a GPU)."""
    model_dir = build_model() if model == "small" else build_model(MODEL_DIR.with_name("llama3-8b-shape"),
                                                                   shape=LLAMA3_8B)
    make = tenfold_step_fn if path == "tenfold" else baseline_step_fn
    step = make(model_dir, length, bf16, device, offload)
    generator = torch.Generator().manual_seed(0)
    step(torch.randint(0, 128_256, (1, 256), generator=generator))
    input_ids = torch.randint(0, 128_256, (1, length), generator=generator)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    started = time.perf_counter()
    loss = step(input_ids)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    return {"path": path, "length": length, "peak_mem_gb": peak, "tokens_per_s": length / seconds,
            "seconds": seconds, "loss": loss, "oom": False, "device": device, "offload": offload}


OUT_OF_MEMORY = ("can't allocate memory", "MemoryError", "OutOfMemoryError", "CUDA out of memory")


def measure_in_subprocess(path: str, length: int, bf16: bool, device: str = "cpu", model: str = "small",
                          offload: bool = False, timeout: float = 3600) -> dict:
    """Each measurement in a fresh process, so peak memory is that step's alone; out of memory -> oom."""
    cmd = [sys.executable, str(Path(__file__)), path, str(length), "bf16" if bf16 else "fp32", device, model,
           "offload" if offload else "keep"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    if not (any(m in done.stderr for m in OUT_OF_MEMORY) or done.returncode == -9):
        raise RuntimeError(f"{path} at {length} failed:\n{done.stderr[-3000:]}")
    return {"path": path, "length": length, "peak_mem_gb": None, "tokens_per_s": None, "oom": True,
            "device": device, "offload": offload}


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return f"{platform.node()}: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


def record(name: str, rows, table: str, notes: str = "", quick: bool = False) -> None:
    """Write results/NAME.json and append the table to BENCHMARKS.md with date, machine and commit."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(ROOT / "BENCHMARKS.md", "a") as f:
        f.write(f"\n## {name}{' --quick' if quick else ''} ({stamp}, commit {commit()})\n\n"
                f"Machine: {machine()}\n\n{table}\n")
        if notes:
            f.write(f"\n{notes}\n")
    print(table)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":  # child process of measure_in_subprocess
    path, length, dtype, device, model, offload = sys.argv[1:7]
    if device == "cpu":
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    print(json.dumps(measure_step(path, int(length), dtype == "bf16", device, model, offload == "offload")))
