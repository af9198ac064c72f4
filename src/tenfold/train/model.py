"""Load a base model for training: RoPE applied, 4-bit/8-bit/full base, LoRA and fully trained extras."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from tenfold.recipe import LoraSettings, ModelSettings, Recipe
from tenfold.rope import apply_rope, rotary_inv_freq
from tenfold.train.rms_norm import lean_rms_norms
from tenfold.train.tiled_mlp import tile_mlps

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def resolve_model_path(name: str) -> str:
    """`tenfold/<name>` is a model shipped inside the package; a name that exists here is a local path; one
    that looks like a path (starts with /, ./, ../ or ~, or has more than one /) and does not exist is an
    error naming it; anything else is a hub id, given to transformers as is."""
    if name.startswith("tenfold/"):
        path = ASSETS / name.removeprefix("tenfold/")
        if not path.is_dir():
            shipped = ", ".join(sorted(f"tenfold/{p.name}" for p in ASSETS.iterdir() if p.is_dir()))
            raise FileNotFoundError(f"no model {name!r} in the package; shipped: {shipped}")
        return str(path)
    local = Path(name).expanduser()
    if local.exists():
        return str(local) if name.startswith("~") else name
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name}: no such file or folder; give an existing local path, or a hub id "
                                f"like meta-llama/Meta-Llama-3-8B-Instruct")
    return name


def mixed_precision(recipe: Recipe, on_gpu: bool | None = None) -> str:
    """train.mixed_precision; auto: bf16 on a GPU (this machine's, unless `on_gpu` says), else none."""
    if recipe.train.mixed_precision != "auto":
        return recipe.train.mixed_precision
    if on_gpu is None:
        on_gpu = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bf16" if on_gpu else "no"


def compute_dtype(recipe: Recipe, on_gpu: bool | None = None) -> torch.dtype:
    """The dtype of the frozen base and of the residual stream: model.dtype, or auto: the mixed precision's.

    Under bf16 autocast a fp32 base would keep the residual stream in fp32 (RMSNorm multiplies by its fp32
    weight, bitsandbytes returns its input's dtype): twice the activation memory and the slow path.
    """
    if recipe.model.dtype != "auto":
        return getattr(torch, recipe.model.dtype)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision(recipe, on_gpu), torch.float32)


def attention_implementation(settings: ModelSettings, device: torch.device) -> str:
    if settings.attn_implementation != "auto":
        return settings.attn_implementation
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def quantization_config(settings: ModelSettings, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if settings.quantization == "nf4":
        # The packed 4-bit bytes stored as `dtype` (same bytes, same compute): FSDP2 shards floating tensors
        # only, and accelerate leaves uint8-stored 4-bit weights out of the sharding (whole on every GPU).
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)
    if settings.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_tokenizer(name: str, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(recipe: Recipe, device: torch.device, quantize: bool = True, dtype: torch.dtype | str | None = None):
    """The base model with the recipe's RoPE in its config; returns (model, rope parameters).

    `dtype` overrides the recipe's (merge passes "auto": the dtype the checkpoint was saved in).
    """
    settings = recipe.model
    path = resolve_model_path(settings.name)
    config = AutoConfig.from_pretrained(path, trust_remote_code=settings.trust_remote_code)
    rope = apply_rope(config, recipe.rope, recipe.data.max_length)
    dtype = dtype or compute_dtype(recipe)
    quant = quantization_config(settings, dtype) if quantize and settings.quantization != "none" else None
    model = AutoModelForCausalLM.from_pretrained(
        path, config=config, dtype=dtype, quantization_config=quant,
        attn_implementation=attention_implementation(settings, device),
        device_map={"": device} if quant is not None else None,
        trust_remote_code=settings.trust_remote_code,
    )
    if quant is None:
        model.to(device)
    check_rope(model, rope)
    return model, rope


def check_rope(model, rope: dict) -> None:
    """Fail loudly if the live rotary embedding does not rotate with the requested base."""
    live = model.config.rope_parameters
    if live.get("rope_theta") != rope["rope_theta"] or live.get("rope_type") != rope["rope_type"]:
        raise RuntimeError(f"the model's config overrode the requested RoPE {rope} with {live}")
    inv_freq = rotary_inv_freq(model)
    head_dim = 2 * inv_freq.numel()
    if rope["rope_type"] == "default":
        expected = 1.0 / rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        if not torch.allclose(inv_freq.double(), expected, rtol=1e-5):
            raise RuntimeError(f"the model rotates with a RoPE base other than {rope['rope_theta']}")


def add_lora(model, settings: LoraSettings, gradient_checkpointing: bool):
    from peft import LoraConfig, get_peft_model  # here, not at the top: synth resolves model names without peft

    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no requires_grad on the inputs and works with frozen 4-bit layers.
        # transformers 5.x renamed gradient_checkpointing_enable (a deprecated alias now); early 5.x lacks the new name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.targets, modules_to_save=settings.extra_trainable or None,
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    # The optimizer must update fp32 copies: a bf16 embedding would swallow updates of lr 5e-5.
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    cast_trained_module_outputs(model)
    return model


def cast_trained_module_outputs(model) -> None:
    """Under autocast, give the fully trained modules' outputs the autocast dtype.

    Their fp32 master weights would otherwise make the trained embedding's output, and with it every
    decoder layer's input and the whole residual stream, fp32 (embedding lookups are not autocast).
    """
    from peft.utils import ModulesToSaveWrapper

    def cast(module, args, output):
        device = output.device.type
        if torch.is_autocast_enabled(device) and output.is_floating_point():
            return output.to(torch.get_autocast_dtype(device))
        return output

    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            module.register_forward_hook(cast)


def load_model_for_training(recipe: Recipe, device: torch.device):
    """The base with the recipe's RoPE, LoRA and trained extras, in training mode.

    from_pretrained returns a model in eval mode, and transformers checkpoints a decoder layer only while
    `self.training` is true: without train() every layer's activations would be kept.
    """
    model, rope = load_base_model(recipe, device)
    model = add_lora(model, recipe.lora, recipe.model.gradient_checkpointing)
    tile_mlps(model, recipe.model.mlp_tile_tokens)  # after LoRA: peft may wrap or copy modules
    lean_rms_norms(model)
    model.train()
    return model, rope
