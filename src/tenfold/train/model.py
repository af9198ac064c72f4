"""Load a base model for training: RoPE applied, 4-bit/8-bit/full base, LoRA and fully trained extras.

Tied embeddings (SmolLM2, Gemma, small Qwens: the LM head is the input embedding's matrix): training
`embed_tokens` trains that one shared matrix, and the head follows it (peft's `ensure_weight_tying`);
the label-sparse loss reads the head's weight, which is then the trained matrix, and the merged model
stays tied. Training the head alone of a tied model is refused: it would silently untie the two.
"""

from __future__ import annotations

import torch

from tenfold.errors import RecipeError
from tenfold.models import load_model
from tenfold.recipe import LoraSettings, Recipe
from tenfold.train.rms_norm import lean_rms_norms
from tenfold.train.tiled_mlp import tile_mlps


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


def load_base_model(recipe: Recipe, device: torch.device, quantize: bool = True,
                    dtype: torch.dtype | str | None = None):
    """The base model with the recipe's RoPE in its config; returns (model, rope parameters).

    `dtype` overrides the recipe's (merge passes "auto": the dtype the checkpoint was saved in).
    """
    settings = recipe.model
    return load_model(settings.name, recipe.rope, recipe.data.max_length, dtype or compute_dtype(recipe), device,
                      settings.quantization if quantize else "none", settings.attn_implementation,
                      settings.trust_remote_code)


def add_lora(model, settings: LoraSettings, gradient_checkpointing: bool):
    from peft import LoraConfig, get_peft_model  # here, not at the top: `tenfold plan` imports this module

    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no requires_grad on the inputs and works with frozen 4-bit layers.
        # transformers 5.x renamed gradient_checkpointing_enable (a deprecated alias now); early 5.x lacks the new name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.targets, modules_to_save=settings.extra_trainable or None,
                        task_type="CAUSAL_LM", ensure_weight_tying=trains_tied_embedding(model, settings))
    model = get_peft_model(model, config)
    # The optimizer must update fp32 copies: a bf16 embedding would swallow updates of lr 5e-5.
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    cast_trained_module_outputs(model)
    cast_lora_inputs_only_outside_autocast(model)
    return model


def trains_tied_embedding(model, settings: LoraSettings) -> bool:
    """Whether the recipe trains a matrix the input embedding and the LM head share (see the module's doc)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return False
    names = {name.rsplit(".", 1)[-1] for name in settings.extra_trainable}
    embedding = next(n for n, m in model.named_modules() if m is model.get_input_embeddings()).rsplit(".", 1)[-1]
    head = next(n for n, m in model.named_modules() if m is model.get_output_embeddings()).rsplit(".", 1)[-1]
    if head in names and embedding not in names:
        raise RecipeError(f"lora.extra_trainable: {head} shares its matrix with {embedding} in this model "
                          f"(tie_word_embeddings); train {embedding} instead (the head follows it)")
    return embedding in names


def cast_trained_module_outputs(model) -> None:
    """Under autocast, give the fully trained modules' outputs the autocast dtype.

    Their fp32 master weights would otherwise make the trained embedding's output, and with it every
    decoder layer's input and the whole residual stream, fp32 (embedding lookups are not autocast).
    """
    from peft.utils import ModulesToSaveWrapper

    def cast(_module, _args, output):  # a forward hook's signature
        device = output.device.type
        if torch.is_autocast_enabled(device) and output.is_floating_point():
            return output.to(torch.get_autocast_dtype(device))
        return output

    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            module.register_forward_hook(cast)


def cast_lora_inputs_only_outside_autocast(model) -> int:
    """Let LoRA layers take their input as given under autocast on any device; returns how many.

    peft casts a LoRA layer's input to its (fp32) weights' dtype unless `torch.is_autocast_enabled()`, which
    asks about CUDA alone: under CPU autocast each of q/k/v/o made an fp32 copy of its bf16 input that
    autocast cast back to bf16 for the matmul, and that second copy is what autograd saved, four per layer
    instead of two inputs (8 KB a token at width 1,024, alive through each layer's recompute). bf16 -> fp32
    -> bf16 is exact, so outputs and gradients are unchanged. Outside autocast peft still casts (a bf16 base
    under fp32 LoRA weights needs it), through its own `cast_input_dtype_enabled` switch.
    """
    from peft.tuners.lora import LoraLayer

    def keep_dtype_under_autocast(module, args, kwargs):  # a forward pre-hook's signature
        x = args[0] if args else kwargs.get("x")
        if isinstance(x, torch.Tensor):
            module.cast_input_dtype_enabled = not torch.is_autocast_enabled(x.device.type)

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.register_forward_pre_hook(keep_dtype_under_autocast, with_kwargs=True)
    return len(layers)


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
