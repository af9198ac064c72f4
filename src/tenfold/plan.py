"""`tenfold plan`: what a recipe's training step needs in memory, and the longest context that fits.

From the model's config alone (no weights) and the recipe, the peak of one QLoRA step is added up
from its parts: quantized weights, full-precision modules, trainable parameters with their gradients
and AdamW state, the checkpointed layer inputs (on the GPU, or in CPU memory with
`model.offload_activations`), one layer's recompute during its backward, the loss chunk, and the
runtime (CUDA context and allocator headroom on a GPU, the process's libraries on a CPU).

The per-token terms are byte counts of the tensors autograd keeps (see `recompute_bytes_per_token`),
checked against peaks measured on the CPU at two widths and two layer counts
(benchmarks/memory_scaling.py, tests/test_plan.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from tenfold.config import setting
from tenfold.errors import RecipeError
from tenfold.recipe import ModelSettings, Recipe

GIB = 2**30
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes, 8-bit absmax per 64, fp32 per 256 absmax
CPU_RUNTIME_GIB = 0.45  # resident size of a process that imported torch, transformers, peft, bitsandbytes
CPU_WORKSPACE_GIB = 0.0625  # what a CPU step holds beyond its tensors (kernels' scratch): 35-80 MB measured
CUDA_CONTEXT_GIB = 0.75  # the CUDA context and cuBLAS workspaces, outside torch's allocator
ALLOCATOR_HEADROOM = 0.05  # share of the card kept free for the caching allocator's fragmentation


@dataclass
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    stored_bytes: int = 2  # bytes per weight in the checkpoint files

    @property
    def kv_width(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)


def load_shape(name: str, trust_remote_code: bool = False) -> Shape:
    """The shape from a config.json file, a model directory, `tenfold/<name>` or a hub id (config only)."""
    from transformers import AutoConfig

    from tenfold.models import load_config

    path = Path(name)
    if path.is_file() and path.suffix != ".gguf":
        fields = json.loads(path.read_text())
        config = AutoConfig.for_model(fields.pop("model_type", "llama"), **fields)
    else:
        config = load_config(name, trust_remote_code)
    stored = str(getattr(config, "dtype", None) or "bfloat16")
    config = config.get_text_config()
    return Shape(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                 config.num_attention_heads, getattr(config, "num_key_value_heads", None) or
                 config.num_attention_heads, config.vocab_size,
                 bool(getattr(config, "tie_word_embeddings", False)), 4 if "float32" in stored else 2)


def compute_bytes(recipe: Recipe, device: str) -> int:
    """Bytes per element of the frozen base and the residual stream on `device`."""
    from tenfold.train.model import compute_dtype

    return compute_dtype(recipe, on_gpu=device == "cuda").itemsize


def lora_params(shape: Shape, recipe: Recipe) -> int:
    d, kv, ffn = shape.hidden, shape.kv_width, shape.intermediate
    sizes = {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
             "gate_proj": (d, ffn), "up_proj": (d, ffn), "down_proj": (ffn, d)}
    unknown = [t for t in recipe.lora.targets if t not in sizes]
    if unknown:
        raise RecipeError(f"tenfold plan knows Llama-style projections ({', '.join(sizes)}), not {unknown}")
    return shape.layers * sum(recipe.lora.rank * sum(sizes[t]) for t in recipe.lora.targets)


def weights_and_state(shape: Shape, recipe: Recipe, b: int, device: str) -> dict[str, float]:
    """Bytes that live through the whole run."""
    d, ffn, layers = shape.hidden, shape.intermediate, shape.layers
    linear = layers * (2 * d * d + 2 * d * shape.kv_width + 3 * d * ffn)
    per_param = {"nf4": NF4_BYTES_PER_PARAM, "int8": 1.0 + 4 / d, "none": b}[recipe.model.quantization]
    embeddings = shape.vocab * d
    full_precision = (embeddings * (1 if shape.tied else 2) + (2 * layers + 1) * d) * b
    trainable = lora_params(shape, recipe) + extra_params(shape, recipe)
    parts = {"quantized weights": linear * per_param, "full-precision modules": full_precision,
             "trainable parameters (fp32)": 4 * trainable, "AdamW state": 8 * trainable}
    if device == "cpu" and shape.stored_bytes == b == 4 and recipe.model.quantization != "none":
        # Measured with fp32 checkpoints loaded in fp32 (not with bf16 ones): the frozen modules stay views of
        # the memory-mapped file, so the pages the quantizer read stay mapped (and resident) while it lives.
        parts["checkpoint pages kept mapped (CPU)"] = linear * shape.stored_bytes
    return parts


def extra_params(shape: Shape, recipe: Recipe) -> int:
    """Parameters of the fully trained modules (embed_tokens, lm_head, norms)."""
    embeddings = shape.vocab * shape.hidden
    sizes = {"embed_tokens": embeddings, "lm_head": 0 if shape.tied else embeddings}
    return sum(sizes.get(name, shape.hidden * shape.layers) for name in recipe.lora.extra_trainable)


def layer_saved_bytes_per_token(shape: Shape, b: int, mlp_positions: float = 1.0) -> float:
    """Bytes per token that autograd saves in one decoder layer's forward (its recompute, when checkpointed).

    Counted with saved-tensor hooks on a Llama layer: the MLP's gate, up and activation outputs
    (3 x intermediate), the attention's inputs and output, the LoRA inputs and the queries (5 widths in
    fp32 and under bf16 autocast alike: q/k/v share one input, which train.model keeps from being copied
    under CPU autocast, and train.rms_norm saves the norms' inputs as given, not upcast to fp32), keys
    and values.
    `mlp_positions` is the share of the sequence whose MLP intermediates exist at once (1: untiled); a
    tiled MLP saves its input instead.
    """
    d, ffn, kv = shape.hidden, shape.intermediate, shape.kv_width
    return b * (5 * d + 2 * kv) + b * 3 * ffn * mlp_positions + (b * d if mlp_positions < 1 else 0)


def recompute_bytes_per_token(shape: Shape, b: int, mlp_positions: float) -> float:
    """Bytes per token alive while one layer's backward runs after its recompute: what it saved, and the
    gradients in flight: 2.5 of the MLP's width (measured: between 2 and 3 as the saved tensors are
    freed) and two fp32 residual widths."""
    in_flight = b * 2.5 * shape.intermediate * mlp_positions + 4 * 2 * shape.hidden
    return layer_saved_bytes_per_token(shape, b, mlp_positions) + in_flight


def activation_phases(shape: Shape, recipe: Recipe, tokens: int, b: int, fsdp: int = 1,
                      sequence_parallel: int = 1) -> dict[str, dict[str, float]]:
    """Bytes that grow with the context, at the three moments one of which is the step's peak: the end
    of the forward (the loss done, its gradient kept), the last layer's backward (all layer inputs kept,
    that layer recomputed) and the trained embedding's backward at the very end, when its full gradient
    exists but the layers' tensors are gone. `tokens` are this process's (its sequence-parallel slice); FSDP
    keeps 1/fsdp of the trained gradients."""
    tile = recipe.model.mlp_tile_tokens
    mlp_positions = tile / tokens if tile and tokens > tile else 1.0
    from tenfold.train.loss import LOGITS_CHUNK_BYTES  # here: `tenfold plan --help` need not load torch

    d, m = shape.hidden, recipe.model
    kept_name = "checkpointed layer inputs" + (" (in CPU memory)" if m.offload_activations else "")
    per_layer = d * b if m.gradient_checkpointing else recompute_bytes_per_token(shape, b, mlp_positions)
    kept = {kept_name: shape.layers * tokens * per_layer}
    lora_grads = 4 * lora_params(shape, recipe) / fsdp
    recompute_name = "one layer's recompute" + (f" (MLP in tiles of {tile})" if mlp_positions < 1 else "")
    exchange = {}
    if sequence_parallel > 1:  # Ulysses: the stacked send and the received copy of q, k, v (and the output)
        kv = shape.kv_width if shape.kv_heads % sequence_parallel == 0 else shape.hidden
        exchange["all-to-all buffers"] = tokens * b * 2 * (2 * d + 2 * kv)
    return {
        "forward end": {**kept, "loss: final norm, hidden states, their gradient": tokens * d * (2 * b + 4),
                        "loss chunk": LOGITS_CHUNK_BYTES * (1.5 if b == 2 else 1.0)},
        "layers' backward": {**kept,
                             recompute_name: tokens * recompute_bytes_per_token(shape, b, mlp_positions),
                             **exchange, "LoRA gradients": lora_grads},
        # FSDP gathers the trained embedding whole for its backward and reduce-scatters its gradient after it.
        "embedding backward": {"trained modules' gradients": 4 * extra_params(shape, recipe) + lora_grads,
                               **({"FSDP: trained modules gathered whole": 4 * extra_params(shape, recipe)}
                                  if fsdp > 1 else {}),
                               "embedding output gradient": tokens * d * (4 + b)},
    }


def plan_peak(recipe: Recipe, length: int, device: str = "cuda", data_parallel: int = 1,
              shape: Shape | None = None, fsdp: int = 1, sequence_parallel: int = 1) -> dict:
    """The peak of one training step of `length` tokens per sequence, in GiB, with its parts, on one of
    data_parallel x sequence_parallel processes; weights and optimizer state sharded over `fsdp` of them."""
    shape = shape or load_shape(recipe.model.name, recipe.model.trust_remote_code)
    b = compute_bytes(recipe, device)
    tokens = -(-length // sequence_parallel) * recipe.train.micro_batch_size
    always = weights_and_state(shape, recipe, b, device)
    if fsdp > 1:
        # Each process keeps 1/fsdp of every weight and of AdamW's state; a layer's are gathered whole while it
        # runs, and the next one's in prefetch.
        layer = (always["quantized weights"] + 4 * lora_params(shape, recipe)) / shape.layers
        always = {f"{k} / {fsdp} (FSDP)": v / fsdp for k, v in always.items()}
        always["FSDP: two layers gathered whole"] = 2 * layer
    if device == "cuda":
        always["CUDA context"] = CUDA_CONTEXT_GIB * GIB
    else:
        always.update({"process runtime": CPU_RUNTIME_GIB * GIB, "kernel workspaces": CPU_WORKSPACE_GIB * GIB})
    if data_parallel * sequence_parallel > 1 and fsdp == 1:  # DDP's buckets: a second copy of the gradients
        always["DDP gradient buckets"] = 4 * (extra_params(shape, recipe) + lora_params(shape, recipe))
    phases = activation_phases(shape, recipe, tokens, b, fsdp, sequence_parallel)
    host = {k: v for k, v in phases["forward end"].items() if "CPU memory" in k}
    on_device = lambda parts: sum(v for k, v in parts.items() if k not in host)  # noqa: E731
    peak_at = max(phases, key=lambda name: on_device(phases[name]))
    total = sum(always.values()) + on_device(phases[peak_at])
    if device == "cuda":
        always["allocator headroom"] = total * ALLOCATOR_HEADROOM
        total += always["allocator headroom"]
    gib = lambda parts: {k: round(v / GIB, 3) for k, v in parts.items()}  # noqa: E731
    return {"length": length, "total_gib": round(total / GIB, 3), "peak_at": peak_at, "always": gib(always),
            "phases": {name: gib(parts) for name, parts in phases.items()},
            "parts": gib({**always, **phases[peak_at]}), "host_gib": round(sum(host.values()) / GIB, 3),
            "bytes_per_element": b}


def longest_context(recipe: Recipe, memory_gib: float, device: str = "cuda", data_parallel: int = 1,
                    step: int = 1024, shape: Shape | None = None, fsdp: int = 1, sequence_parallel: int = 1) -> int:
    """The longest multiple of `step` tokens whose planned peak fits in `memory_gib` (0 if none)."""
    shape = shape or load_shape(recipe.model.name, recipe.model.trust_remote_code)
    def fits(n: int) -> bool:
        peak = plan_peak(recipe, n * step, device, data_parallel, shape, fsdp, sequence_parallel)
        return peak["total_gib"] <= memory_gib

    if not fits(1):
        return 0
    high = 2
    while fits(high) and high < 2**16:
        high *= 2
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low * step


@dataclass
class PlanSettings:
    """`tenfold plan`: the recipe (its file and --section.key flags) and the machine to plan for."""
    recipe: Recipe = field(default_factory=Recipe)
    gpu_memory: float = setting(80.0, "GiB per GPU")
    gpus: int = setting(1, "data-parallel GPUs to plan for")
    length: int | None = setting(None, "tokens per sequence (default: the recipe's data.max_length)")
    device: Literal["cuda", "cpu"] = setting("cuda", "plan for a GPU or this CPU")
    fsdp: int = setting(1, "GPUs the weights and optimizer state are sharded over")
    sequence_parallel: int = setting(1, "GPUs each sequence is split over")
    json: bool = setting(False, "machine-readable output")

    def __post_init__(self):
        if self.gpus % self.sequence_parallel or self.fsdp > self.gpus:
            raise RecipeError(f"--sequence-parallel {self.sequence_parallel} must divide --gpus {self.gpus}, and "
                              f"--fsdp {self.fsdp} be at most --gpus")


def plan(settings: PlanSettings) -> dict:
    """The peak at the recipe's length (or settings.length) and the longest context per data-parallel degree,
    as the recipe stands and with activation offload and the tiled MLP switched on; with `fsdp` or
    `sequence_parallel` above 1, also on all `gpus` with those degrees."""
    recipe, memory_gib, gpus, device = settings.recipe, settings.gpu_memory, settings.gpus, settings.device
    fsdp, sequence_parallel = settings.fsdp, settings.sequence_parallel
    shape = load_shape(recipe.model.name, recipe.model.trust_remote_code)
    length = settings.length or recipe.data.max_length
    variants = {"as the recipe": recipe}
    offload = replace(recipe, model=replace(recipe.model, offload_activations=True))
    if not recipe.model.offload_activations:
        variants["offload"] = offload
    if not recipe.model.mlp_tile_tokens:
        tile = ModelSettings().mlp_tile_tokens  # the default tile
        variants["offload + tiled MLP"] = replace(offload, model=replace(offload.model, mlp_tile_tokens=tile))
    degrees = sorted({1, 2, gpus} & set(range(1, gpus + 1)))
    peak = {n: plan_peak(recipe, length, device, n, shape) for n in degrees}
    sharded = {}
    if fsdp > 1 or sequence_parallel > 1:
        degrees_of = {"gpus": gpus, "fsdp": fsdp, "sequence_parallel": sequence_parallel}
        dp = gpus // sequence_parallel
        sharded = {**degrees_of, "peak": plan_peak(recipe, length, device, dp, shape, fsdp, sequence_parallel),
                   "longest_context": {name: longest_context(r, memory_gib, device, dp, shape=shape, fsdp=fsdp,
                                                             sequence_parallel=sequence_parallel)
                                       for name, r in variants.items()}}
    return {
        "model": recipe.model.name, "shape": shape.__dict__, "memory_gib": memory_gib, "device": device,
        "peak": peak, "sharded": sharded,
        "longest_context": {name: {n: longest_context(r, memory_gib, device, n, shape=shape) for n in degrees}
                            for name, r in variants.items()},
        "fits": peak[gpus]["total_gib"] <= memory_gib, "length": length,
    }


def format_plan(result: dict) -> str:
    s, peak = result["shape"], result["peak"][max(result["peak"])]
    lines = [f"{result['model']}: {s['layers']} layers, width {s['hidden']}, MLP {s['intermediate']}, "
             f"{s['heads']}/{s['kv_heads']} heads, vocab {s['vocab']}",
             f"peak of one step at {result['length']:,} tokens: {peak['total_gib']:.1f} GiB per GPU "
             f"(at the {peak['peak_at']}; {'fits' if result['fits'] else 'does NOT fit'} in "
             f"{result['memory_gib']:g} GiB)"]
    lines += [f"  {name:<46} {gib:8.2f} GiB" for name, gib in peak["parts"].items()]
    if peak["host_gib"]:
        lines.append(f"  {'(in CPU memory: checkpointed layer inputs)':<46} {peak['host_gib']:8.2f} GiB")
    lines.append(f"longest context in {result['memory_gib']:g} GiB per GPU, by GPUs of data parallelism:")
    for name, by_gpus in result["longest_context"].items():
        lines.append(f"  {name:<22} " + "  ".join(f"{n} GPU{'s' if n > 1 else ''}: {tokens:,}"
                                                 for n, tokens in by_gpus.items()))
    if sharded := result["sharded"]:
        lines.append(f"on {sharded['gpus']} GPUs with FSDP {sharded['fsdp']} and sequence parallel "
                     f"{sharded['sequence_parallel']}: {sharded['peak']['total_gib']:.1f} GiB per GPU at "
                     f"{result['length']:,} tokens; longest context:")
        lines += [f"  {name:<22} {tokens:,}" for name, tokens in sharded["longest_context"].items()]
        if "offload" in sharded["longest_context"]:
            lines.append("  (offload keeps each GPU's slice of the checkpointed layer inputs in CPU memory)")
    return "\n".join(lines)
