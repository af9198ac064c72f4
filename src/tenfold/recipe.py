"""Recipes: the settings of a whole run, as typed dataclasses loaded from YAML.

A recipe file has one mapping per section (model, rope, lora, data, train); every key of every
section can also be set on the command line as `--section.key VALUE`. Validation names the bad key
and the allowed keys or values. (Plain dataclasses rather than pydantic: the checks we need are a
few lines, and the messages can list the allowed keys, which pydantic's "extra fields" error does not.)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tenfold.errors import UserError


class RecipeError(UserError):
    pass


@dataclass
class ModelSettings:
    name: str = "tenfold/tiny-llama"  # hub id, local path, or tenfold/<name> for a model shipped in the package
    quantization: Literal["nf4", "int8", "none"] = "nf4"  # nf4 = QLoRA's 4-bit NormalFloat base
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"
    gradient_checkpointing: bool = True
    offload_activations: bool = False  # keep the checkpointed activations in CPU memory (GPU runs at long context)
    # Run each layer's MLP over tiles of this many positions in sequences longer than that (0: never).
    # Measured (CPU, width 1024, MLP 3584, NF4 + LoRA, bf16): at 4K tiling saves no memory and costs +28%
    # step time (tiles of 2048); at 8K tiles of 4096 save 8% of the peak for +22% (fp32: 12% for +15%).
    # The cost stays one more MLP forward a layer while the saving grows with length: on beyond 8K only.
    mlp_tile_tokens: int = 8192
    trust_remote_code: bool = False


@dataclass
class RopeSettings:
    theta: float | None = None  # the new RoPE base; None keeps the model's own
    theta_factor: float | None = None  # or: the model's own base times this (the paper's is x400)
    scaling: Literal["keep", "none", "linear", "dynamic", "yarn", "llama3"] = "keep"  # keep: the model's own
    factor: float = 1.0
    original_max_position_embeddings: int | None = None  # default: the model's max_position_embeddings
    low_freq_factor: float = 1.0  # llama3 scaling only
    high_freq_factor: float = 4.0  # llama3 scaling only


@dataclass
class LoraSettings:
    rank: int = 32
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    extra_trainable: list[str] = field(default_factory=lambda: ["embed_tokens"])  # trained in full, saved with the adapter


@dataclass
class DataSettings:
    train_files: list[str] = field(default_factory=list)  # JSONL of conversation and plain-text records
    max_length: int = 81920
    context_weight: float = 0.0  # loss weight on the text of a conversation's user turns (paper: 0)


@dataclass
class TrainSettings:
    output_dir: str = "runs/tenfold"
    learning_rate: float = 5e-5
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8  # sequences per optimizer step, over all processes
    micro_batch_size: int = 1  # sequences per forward pass
    epochs: int = 1
    max_steps: int | None = None
    seed: int = 42
    group_by_length: bool = True
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    loss_chunk_size: int | None = None  # rows of the LM head per chunk; None: about 64 MB of fp32 logits
    save_every: int = 0  # checkpoint every N optimizer steps (0: only the final adapter)
    # Split each sequence over this many processes (Ulysses: all-to-all around attention); the processes of a
    # launch are data-parallel groups of this size. Must divide the process count and the attention heads.
    sequence_parallel: int = 1
    log_every: int = 1


@dataclass
class Recipe:
    model: ModelSettings = field(default_factory=ModelSettings)
    rope: RopeSettings = field(default_factory=RopeSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)


def recipe_keys() -> dict[str, Any]:
    """Every dotted key ('lora.rank', ...) with its type."""
    keys = {}
    for section in dataclasses.fields(Recipe):
        hints = typing.get_type_hints(section.default_factory)
        for f in dataclasses.fields(section.default_factory):
            keys[f"{section.name}.{f.name}"] = hints[f.name]
    return keys


def _describe(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise a RecipeError naming the key."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise RecipeError(f"{key}: {value!r} is not allowed; use one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, options[0], key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, item, key) for v in value]
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{key}: expected {_describe(tp)}, got {value!r}") from None
    raise RecipeError(f"{key}: unsupported type {tp}")


def set_key(recipe: Recipe, key: str, value: Any) -> None:
    keys = recipe_keys()
    if key not in keys:
        section = key.split(".")[0]
        same_section = [k for k in keys if k.startswith(section + ".")]
        allowed = same_section or [f.name for f in dataclasses.fields(Recipe)]
        raise RecipeError(f"unknown recipe key {key!r}; allowed: {', '.join(allowed)}")
    section, name = key.split(".")
    setattr(getattr(recipe, section), name, coerce(value, keys[key], key))


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


def read_recipe_file(path: str | Path, kind: str = "recipe") -> dict:
    """A recipe (or suite) file's mapping of sections; a missing file, bad YAML or another shape is a RecipeError."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{kind} file {path} not found; give an existing YAML file (see recipes/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not valid YAML: {e}; fix that line") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of sections (model, rope, lora, data, train, synth, ...)")
    return raw


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


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
