"""What the training benchmarks share: the benchmark model, one optimizer step on each path, recording.

The model is Llama-architecture with Llama-3's vocabulary (128,256) and a small hidden size, so the
LM head and the loss dominate as they do at long context; weights are random (no download). The
`w1024x8-vocab16k` model keeps real-width layers with a small vocabulary, so the layers dominate.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL_DIR = ROOT / "benchmarks" / ".cache" / "llama-128k-vocab"
ADDRESS_SPACE_LIMIT = 24 * 2**30  # "fits in 24 GiB": a step that needs more fails to allocate


LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8)
LLAMA3_8B_DIR = MODEL_DIR.with_name("llama3-8b-shape")
VOCAB = 128_256
# glibc raises its mmap threshold as large blocks are freed (up to 32 MB), after which freed tensors stay in
# the heap and the resident size overstates live tensors by up to half at width 1,024. A fixed threshold
# makes the resident peak track live tensor bytes, as max_memory_allocated does on a GPU.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def llama_sizes(hidden: int = 128, layers: int = 2, heads: int = 4, shape: dict | None = None,
                vocab: int = VOCAB) -> dict:
    """The benchmark model's LlamaConfig arguments: Llama-3's vocabulary (or `vocab`) and RoPE base, `shape` or
    the small sizes."""
    sizes = shape or dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=heads)
    return dict(vocab_size=vocab, max_position_embeddings=8192, rope_theta=500_000.0, tie_word_embeddings=False,
                **sizes)


def llama_config(hidden: int = 128, layers: int = 2, heads: int = 4, shape: dict | None = None):
    from tenfold import toy

    return toy.llama_config(**llama_sizes(hidden, layers, heads, shape))


def build_model(path: Path = MODEL_DIR, hidden: int = 128, layers: int = 2, heads: int = 4,
                shape: dict | None = None, vocab: int = VOCAB) -> Path:
    """Random weights (seed 0) saved once; `shape` (e.g. LLAMA3_8B) replaces the small default sizes."""
    if (path / "config.json").is_file():
        return path
    from tenfold import toy

    device = "cuda" if shape and torch.cuda.is_available() else "cpu"  # 8B random init is minutes on a CPU
    model = toy.build_model(seed=0, device=device, **llama_sizes(hidden, layers, heads, shape, vocab))
    model.to(torch.bfloat16 if shape else torch.float32).save_pretrained(path)
    return path


def paper_recipe(model_dir: Path | str, length: int, bf16: bool = True, offload: bool = False,
                 quantization: str = "nf4"):
    """The paper's recipe (recipes/llama3-8b-instruct-80k.yaml) pointed at model_dir, for one length."""
    from tenfold.recipe import load_recipe

    return load_recipe(ROOT / "recipes" / "llama3-8b-instruct-80k.yaml", {
        "model.name": str(model_dir), "model.dtype": "auto", "data.max_length": length,
        "model.quantization": quantization,
        "train.mixed_precision": "bf16" if bf16 else "no", "model.offload_activations": offload})


def tenfold_step_fn(model_dir: Path | None = None, length: int = 0, bf16: bool = True, device: str = "cpu",
                    offload: bool = False, recipe=None):
    """tenfold train's step: QLoRA model from tenfold's loader, label-sparse loss, AdamW.

    `recipe` replaces the paper's recipe pointed at model_dir (its precision then comes from the recipe).
    """
    from tenfold.train.loop import build_optimizer, offload_activations
    from tenfold.train.loss import CausalLMLoss
    from tenfold.train.model import load_model_for_training, mixed_precision

    recipe = recipe or paper_recipe(model_dir, length, bf16, offload)
    bf16 = mixed_precision(recipe) == "bf16"
    model, _ = load_model_for_training(recipe, torch.device(device))
    loss_model = CausalLMLoss(model)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], recipe)

    def step(input_ids):
        input_ids = input_ids.to(device)
        weights = torch.ones_like(input_ids, dtype=torch.float32)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16), \
                offload_activations(recipe, torch.device(device)):
            loss = loss_model(input_ids, torch.ones_like(input_ids), weights) / weights[:, 1:].sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    step.loss_model = loss_model  # for tools that hook into the step (memory_timeline.py)
    return step


def qlora_configs(dtype: torch.dtype):
    """The NF4 base and the LoRA the paper's recipe trains (r32, alpha 16, q/k/v/o, embed_tokens in full)."""
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    lora = LoraConfig(r=32, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      modules_to_save=["embed_tokens"])
    return quant, lora


def baseline_step_fn(model_dir: Path, length: int, bf16: bool, device: str = "cpu",  # noqa: ARG001
                     offload: bool = False):
    """The plain path: transformers + peft's QLoRA recipe, the model's own loss from labels.

    `length` is unused: STEP_FNS share one signature, and only tenfold's step builds a recipe from it."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    quant, lora = qlora_configs(dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=dtype,
                                                 attn_implementation="sdpa", device_map={"": device})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, lora)
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


def cpu_peak_bytes() -> int:
    """The process's peak resident size since the last reset_cpu_peak (Linux VmHWM)."""
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024


def reset_cpu_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak resident size (Linux >= 4.0)
        f.write("5")


class StepTimer:
    """Times one optimizer step; the peak-memory statistics start with it (so loading does not count)."""

    def __init__(self, device: str):
        self.device, self.started, self.seconds = device, 0.0, None

    def begin(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_cpu_peak()
        self.started = time.perf_counter()

    def end(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.started


def timing_callback(timer: StepTimer, step: int):
    """A TrainerCallback running `timer` around the loop's step `step` (0-based): from on_step_begin (its
    batch already fetched) to on_step_end (after the optimizer step)."""
    from transformers import TrainerCallback

    class TimedStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ARG002 (TrainerCallback's signature)
            if state.global_step == step:
                timer.begin()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002 (TrainerCallback's signature)
            if state.global_step == step + 1:
                timer.end()
    return TimedStep()


def trl_train(model_dir: Path, inputs: list[torch.Tensor], bf16: bool, device: str, offload: bool,
              timer: StepTimer) -> float:
    """TRL's SFTTrainer (trl 1.x) with its documented long-context settings, one optimizer step per row of
    `inputs` in order, the last one timed by `timer` through a TrainerCallback; returns its loss.

    On: non-reentrant activation checkpointing; TRL's default loss (its fused, chunked LM head: log-probs
    over tiles of 4,096 tokens x 32,768 vocabulary entries, never the full logits); padding-free batches
    (one unpadded sequence; flash-attention 2 where installed on a GPU, as TRL documents for padding-free,
    else SDPA); activation offloading with `offload` on a GPU. Off: activation offloading on the CPU (TRL's
    OffloadActivations asks torch for the current accelerator and fails without one, and the activations are
    in host memory already); packing (one sequence per step: nothing to pack); use_liger_kernel (deprecated
    in 1.16, Triton/CUDA kernels, and SFTTrainer refuses Liger's fused cross-entropy, its own head replacing
    it); selective checkpointing (saves more to recompute less: memory for speed). TRL casts QLoRA's
    trainable weights to bf16, in fp32 runs too. AdamW at 5e-5 without clipping, like the other paths.
    Without Triton (the CPU) the head's tiles are plain torch ops on fp32 temporaries of min(length, 4,096)
    x 32,768 entries: its memory grows with length up to 4K tokens (~1 GB per 1K here), then stays."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    dtype = torch.bfloat16 if bf16 else torch.float32
    flash = device == "cuda" and importlib.util.find_spec("flash_attn") is not None
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), max_steps=len(inputs), seed=0,
        per_device_train_batch_size=1, train_sampling_strategy="sequential", bf16=bf16, use_cpu=device == "cpu",
        optim="adamw_torch", learning_rate=5e-5, weight_decay=0.0, max_grad_norm=0.0,
        activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False},
        padding_free=True, max_length=None, activation_offloading=offload and device == "cuda",
        model_init_kwargs={"dtype": dtype, "device_map": {"": device},
                           "attn_implementation": "flash_attention_2" if flash else "sdpa"},
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True)
    # The rows are token ids already; the tokenizer only names the pad token (never used: batch size 1).
    tokenizer = PreTrainedTokenizerFast(pad_token="<pad>", eos_token="<pad>", tokenizer_object=Tokenizer(
        models.WordLevel({"<pad>": 0}, unk_token="<pad>")))
    quant, lora = qlora_configs(dtype)
    trainer = SFTTrainer(str(model_dir), args=config, processing_class=tokenizer, quantization_config=quant,
                         peft_config=lora, callbacks=[timing_callback(timer, len(inputs) - 1)],
                         train_dataset=Dataset.from_dict({"input_ids": [row[0].tolist() for row in inputs]}))
    trainer.train()
    return [log["loss"] for log in trainer.state.log_history if "loss" in log][-1]


STEP_FNS = {"baseline": baseline_step_fn, "tenfold": tenfold_step_fn}


# Width 1,024 with Llama-3's proportions (MLP 3.5x, 4 query heads per KV head), 8 layers: real proportions
# at a size a 2-core CPU trains at tens of thousands of tokens.
W1024X8 = dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=8, num_attention_heads=8,
               num_key_value_heads=2)
# The same layers with a vocabulary of 16,384: no path's loss scratch (TRL's fixed tiles of 4,096 x
# 32,768 fp32 logits, tenfold's 64 MB chunk, the embedding's gradient) outweighs its layers at 4K+ tokens.
SMALL_VOCAB = 16_384


def benchmark_model(model: str = "small") -> Path:
    """The model directory for `small` (hidden 128, 2 layers), `w1024x8`, `w1024x8-vocab16k` (its vocabulary
    16,384) or `llama3-8b`, built if absent."""
    if model == "small":
        return build_model()
    if model == "w1024x8":
        return build_model(MODEL_DIR.with_name("llama-w1024x8"), shape=W1024X8)
    if model == "w1024x8-vocab16k":
        return build_model(MODEL_DIR.with_name("llama-w1024x8-vocab16k"), shape=W1024X8, vocab=SMALL_VOCAB)
    return build_model(LLAMA3_8B_DIR, shape=LLAMA3_8B)


def measure_step(path: str, length: int, bf16: bool, device: str = "cpu", model: str = "small",
                 offload: bool = False) -> dict:
    """One warm-up step at 256 tokens, then one timed step at `length` (same random ids, seed 0, every token
    labelled, on every path); peak memory of this process from the timed step's start (resident size on the
    CPU, max allocated on a GPU)."""
    model_dir = benchmark_model(model)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, vocab, (1, n), generator=generator) for n in (256, length)]
    timer = StepTimer(device)
    if path == "trl":
        loss = trl_train(model_dir, inputs, bf16, device, offload, timer)
    else:
        step = STEP_FNS[path](model_dir, length, bf16, device, offload)
        step(inputs[0])
        timer.begin()
        loss = step(inputs[1])
        timer.end()
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else cpu_peak_bytes()) / 2**30
    return {"path": path, "length": length, "peak_mem_gb": peak, "tokens_per_s": length / timer.seconds,
            "seconds": timer.seconds, "loss": loss, "oom": False, "device": device, "offload": offload}


OUT_OF_MEMORY = ("can't allocate memory", "MemoryError", "OutOfMemoryError", "CUDA out of memory")


# Paths that need a peer installed: path -> (its module, the one line that installs it).
OPTIONAL_PEERS = {"trl": ("trl", "pip install -e '.[bench]'  # TRL's SFTTrainer")}


def installed_paths(paths: list[str], benchmark: str) -> list[str]:
    """The paths whose peer is installed; each one skipped says so in one line, with what to install."""
    kept = []
    for path in paths:
        module, install = OPTIONAL_PEERS.get(path, (None, None))
        if module and importlib.util.find_spec(module) is None:
            print(f"{benchmark}: skipping the {path} path: {module} is not installed; {install}", file=sys.stderr)
        else:
            kept.append(path)
    return kept


def measure_in_subprocess(path: str, length: int, bf16: bool, device: str = "cpu", model: str = "small",
                          offload: bool = False, timeout: float = 3600) -> dict:
    """Each measurement in a fresh process, so peak memory is that step's alone; out of memory -> oom, past
    `timeout` seconds -> timed_out (both without figures); wall_s: the child's whole run, loading included."""
    cmd = [sys.executable, str(Path(__file__)), path, str(length), "bf16" if bf16 else "fp32", device, model,
           "offload" if offload else "keep"]
    started = time.perf_counter()
    empty = {"path": path, "length": length, "peak_mem_gb": None, "tokens_per_s": None, "oom": True,
             "device": device, "offload": offload}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **FIXED_MMAP_THRESHOLD))
    except subprocess.TimeoutExpired:
        return empty | {"oom": False, "timed_out": True, "wall_s": time.perf_counter() - started}
    wall = {"wall_s": time.perf_counter() - started}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line) | wall
    if not (any(m in done.stderr for m in OUT_OF_MEMORY) or done.returncode == -9):
        raise RuntimeError(f"{path} at {length} failed:\n{done.stderr[-3000:]}")
    return empty | wall


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "?")
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
