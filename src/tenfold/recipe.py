"""Recipes: the settings of a whole training run, as typed dataclasses loaded from YAML (tenfold.config's engine).

A recipe file has one mapping per section (model, rope, lora, data, train); every key of every section can also
be set on the command line as `--section.key VALUE`. Validation names the bad key and the allowed keys or values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tenfold.config import check_value, coerce, field_types, read_recipe_file, setting
from tenfold.errors import RecipeError

__all__ = ["RecipeError", "coerce", "read_recipe_file"]  # for the callers that import them from here


# accelerate's tracker names (accelerate.utils.LoggerType; a test keeps them equal), here so that reading a recipe
# does not import accelerate.
TRACKERS = ("all", "tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "swanlab")


def parse_trackers(value) -> list[str]:
    """train.report_to: a list or comma-separated text of tracker names; none (or nothing) is no tracker."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise RecipeError(f"train.report_to: expected tracker names, got {value!r}")
    names = [n.lower() for n in names if n.strip() and n.lower() != "none"]
    if unknown := [n for n in names if n not in TRACKERS]:
        raise RecipeError(f"train.report_to: {', '.join(map(repr, unknown))} is not a tracker; use none or "
                          f"{', '.join(TRACKERS)}")
    return list(dict.fromkeys(names))


@dataclass
class ModelSettings:
    name: str = setting("tenfold/tiny-llama", "hub id, local path, .gguf file, or tenfold/<name> for a model "
                        "shipped in the package")
    quantization: Literal["nf4", "int8", "none"] = setting("nf4", "the frozen base's weights; nf4 = QLoRA's 4-bit "
                                                                  "NormalFloat")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = setting(
        "auto", "compute dtype; auto: bf16 on a GPU that has it, else fp32")
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = setting("auto", "attention kernel")
    gradient_checkpointing: bool = setting(True, "keep only each layer's input, recompute the rest in backward")
    offload_activations: bool = setting(False, "keep the checkpointed activations in CPU memory (GPU runs at long "
                                               "context)")
    # Measured (CPU, width 1024, MLP 3584, NF4 + LoRA, bf16): at 4K tiling saves no memory and costs +28%
    # step time (tiles of 2048); at 8K tiles of 4096 save 8% of the peak for +22% (fp32: 12% for +15%).
    # The cost stays one more MLP forward a layer while the saving grows with length: on beyond 8K only.
    mlp_tile_tokens: int = setting(8192, "run each layer's MLP over tiles of this many positions in sequences "
                                         "longer than that (0: never)")
    trust_remote_code: bool = setting(False, "let transformers run the model repository's own code")


@dataclass
class RopeSettings:
    theta: float | None = setting(None, "the new RoPE base (default: the model's own)")
    theta_factor: float | None = setting(None, "or: the model's own base times this (the paper's is x400)")
    scaling: Literal["keep", "none", "linear", "dynamic", "yarn", "llama3"] = setting(
        "keep", "RoPE scaling; keep: the model's own")
    factor: float = setting(1.0, "the scaling's factor")
    original_max_position_embeddings: int | None = setting(None, "the scaling's original length (default: the "
                                                                 "model's max_position_embeddings)")
    low_freq_factor: float = setting(1.0, "llama3 scaling only")
    high_freq_factor: float = setting(4.0, "llama3 scaling only")


@dataclass
class LoraSettings:
    rank: int = setting(32, "LoRA rank")
    alpha: float = setting(16.0, "LoRA alpha (the update is scaled by alpha / rank)")
    dropout: float = setting(0.0, "LoRA dropout")
    targets: list[str] = setting(["q_proj", "k_proj", "v_proj", "o_proj"], "modules that get LoRA adapters")
    extra_trainable: list[str] = setting(["embed_tokens"], "modules trained in full, saved with the adapter")


@dataclass
class DataSettings:
    train_files: list[str] = setting([], "JSONL files of conversation and plain-text records")
    max_length: int = setting(81920, "tokens per training sequence")
    context_weight: float = setting(0.0, "loss weight on the text of a conversation's user turns (paper: 0)")
    eval_files: list[str] = setting([], "held-out JSONL files (the training records' format): their loss by "
                                        "position at the end, and every train.eval_every steps")


@dataclass
class TrainSettings:
    output_dir: str = setting("runs/tenfold", "the run's folder: adapter, checkpoints, summary")
    learning_rate: float = setting(5e-5, "peak learning rate")
    lr_schedule: Literal["linear", "cosine", "constant"] = setting("linear", "decay after the warm-up")
    warmup_steps: int = setting(0, "optimizer steps of linear warm-up")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    max_grad_norm: float = setting(1.0, "gradient clipping norm")
    batch_size: int = setting(8, "sequences per optimizer step, over all processes")
    micro_batch_size: int = setting(1, "sequences per forward pass")
    epochs: int = setting(1, "passes over the training files")
    max_steps: int | None = setting(None, "stop after this many optimizer steps (default: the epochs')")
    seed: int = setting(42, "seed of shuffling and initialization")
    group_by_length: bool = setting(True, "batch sequences of similar length together")
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = setting("auto", "autocast dtype")
    loss_chunk_size: int | None = setting(None, "rows of the LM head per loss chunk (default: about 64 MB of fp32 "
                                                "logits)")
    save_every: int = setting(0, "checkpoint every N optimizer steps (0: only the final adapter)")
    # The processes of a launch are data-parallel groups of this size.
    sequence_parallel: int = setting(1, "split each sequence over this many processes (Ulysses all-to-all around "
                                        "attention); must divide the process count and the attention heads")
    log_every: int = setting(1, "log every N optimizer steps")
    report_to: list[str] = setting([], "experiment trackers (accelerate's) that get each step's loss, lr, tokens/s "
                                       "and peak memory: comma-separated " + ", ".join(TRACKERS[1:]) + ", or all "
                                       "(every one installed); default none", parse=parse_trackers)
    eval_every: int = setting(0, "the held-out loss (data.eval_files) every N optimizer steps and at step 0 "
                                 "(0: at the end only)")


@dataclass
class Recipe:
    model: ModelSettings = field(default_factory=ModelSettings)
    rope: RopeSettings = field(default_factory=RopeSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)


def recipe_keys() -> dict[str, Any]:
    """Every dotted key ('lora.rank', ...) with its type."""
    return {f"{section}.{name}": tp for section, cls in field_types(Recipe).items()
            for name, tp in field_types(cls).items()}


def set_key(recipe: Recipe, key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    sections = field_types(Recipe)
    if section not in sections:
        raise RecipeError(f"unknown recipe key {key!r}; allowed: {', '.join(sections)}")
    setattr(getattr(recipe, section), name, check_value(sections[section], name, value, "recipe", f"{section}."))


# Sections one recipe file may also hold for the other verbs; each verb reads its own.
OTHER_VERBS_SECTIONS = ("synth", "mix", "eval", "demo")


def recipe_from_dict(raw: dict, source: str = "recipe") -> Recipe:
    recipe = Recipe()
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: expected a mapping of sections (model, rope, lora, data, train)")
    for section, values in raw.items():
        if section in OTHER_VERBS_SECTIONS:
            continue
        if not isinstance(values, dict):
            sections = ", ".join(f.name for f in dataclasses.fields(Recipe))
            raise RecipeError(f"{source}: {section!r} must be a section mapping; sections: {sections}")
        for name, value in values.items():
            try:
                set_key(recipe, f"{section}.{name}", value)
            except RecipeError as e:
                raise RecipeError(f"{source}: {e}") from None
    return recipe


def load_recipe(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Defaults, then the YAML file, then the overrides (dotted keys), each validated."""
    recipe = Recipe()
    if path is not None:
        recipe = recipe_from_dict(read_recipe_file(path), str(path))
    for key, value in (overrides or {}).items():
        set_key(recipe, key, value)
    validate(recipe)
    return recipe


def validate(recipe: Recipe) -> None:
    t = recipe.train
    if t.micro_batch_size < 1 or t.batch_size < 1:
        raise RecipeError("train.batch_size and train.micro_batch_size must be at least 1")
    if t.batch_size % t.micro_batch_size:
        raise RecipeError(f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size "
                          f"({t.micro_batch_size})")
    if recipe.data.max_length < 2:
        raise RecipeError("data.max_length must be at least 2")
    if recipe.rope.theta is not None and recipe.rope.theta <= 0:
        raise RecipeError("rope.theta must be positive")
    if recipe.rope.theta is not None and recipe.rope.theta_factor is not None:
        raise RecipeError("set rope.theta or rope.theta_factor, not both")
    if recipe.rope.theta_factor is not None and recipe.rope.theta_factor <= 0:
        raise RecipeError("rope.theta_factor must be positive")
    if recipe.rope.scaling in ("linear", "yarn", "llama3") and recipe.rope.factor <= 1.0:
        raise RecipeError(f"rope.factor must be above 1 for rope.scaling {recipe.rope.scaling!r}")
    if recipe.model.mlp_tile_tokens < 0:
        raise RecipeError("model.mlp_tile_tokens must be 0 (untiled) or a number of positions")
    if recipe.lora.rank < 1:
        raise RecipeError("lora.rank must be at least 1")
    if t.eval_every < 0:
        raise RecipeError("train.eval_every must be 0 (held-out loss at the end only) or a number of steps")
    if t.eval_every and not recipe.data.eval_files:
        raise RecipeError("train.eval_every needs held-out data: set data.eval_files")


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
