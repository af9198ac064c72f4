"""RMSNorm that saves its input as given, not fp32 copies of it, for the backward.

Llama's RMSNorm upcasts its input to fp32 and autograd keeps that upcast for the backward: under bf16
4 bytes a width per token and norm, twice the bf16 input (16 KB a token at Llama-3-8B's 4096, for
each of a layer's two norms, alive through its recompute). The function here computes the same
output, saves the input in its own dtype and the per-row rstd, and recomputes the rest in backward.
The backward follows autograd's own steps for the stock forward, so gradients are the stock's. Both
run over chunks of rows, so their fp32 temporaries never span the whole sequence.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

# Rows per chunk of the forward and of the input's gradient: their fp32 temporaries (an upcast copy and
# a few products of it, each 4 bytes a width a token) would otherwise exist for the whole sequence at
# once; at width 1,024 they were the step's peak, 20 KB a token above the rest of a layer's backward.
CHUNK_ELEMENTS = 2**22


class LeanRMSNormFunction(torch.autograd.Function):
    """weight * (x / rms(x)) with Llama's dtypes: fp32 inside, normalized row back in x's dtype."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rows = x.reshape(-1, x.shape[-1])
        out = torch.empty(rows.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
        rstd = torch.empty(rows.shape[0], 1, dtype=torch.float32, device=x.device)
        for chunk in row_chunks(rows):
            h = rows[chunk].float()
            rstd[chunk] = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
            out[chunk] = weight * (h * rstd[chunk]).to(x.dtype)
        ctx.save_for_backward(x, rstd)
        # A parameter, alive anyway: saved-tensor hooks (save_on_cpu) would copy it if saved with x.
        ctx.weight = weight
        return out.reshape(x.shape[:-1] + out.shape[-1:])

    @staticmethod
    def backward(ctx, grad_out):
        x, rstd = ctx.saved_tensors
        weight = ctx.weight
        grad_x = grad_weight = None
        # backward() may run inside autocast (the loop's does): CUDA's would sum the weight's grad in fp32.
        with torch.autocast(grad_out.device.type, enabled=False):
            rows, grad_rows = x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
            if ctx.needs_input_grad[1]:  # one sum over all rows, as autograd's: not chunked (rarely trained)
                normed = (rows.float() * rstd).to(x.dtype)
                grad_weight = (grad_rows * normed).sum_to_size(weight.shape).to(weight.dtype)
                del normed
            if ctx.needs_input_grad[0]:
                grad_x = torch.empty_like(rows)
                for chunk in row_chunks(rows):
                    grad_x[chunk] = input_grad(rows[chunk], grad_rows[chunk], weight, rstd[chunk])
                grad_x = grad_x.reshape(x.shape)
        return grad_x, grad_weight, None


def row_chunks(rows: torch.Tensor) -> list[slice]:
    """Slices of at most CHUNK_ELEMENTS elements of whole rows: the fp32 temporaries exist one chunk at a time."""
    step = max(1, CHUNK_ELEMENTS // rows.shape[-1])
    return [slice(start, start + step) for start in range(0, rows.shape[0], step)]


def input_grad(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """The input's gradient for rows `x`, by autograd's steps for the stock forward."""
    h = x.float()
    # As in autograd: the product's gradient is cast to x's dtype before the upcast's backward.
    grad_normed = (grad_out * weight).to(x.dtype).float()
    grad_rstd = (grad_normed * h).sum(-1, keepdim=True)
    grad_mean = -0.5 * grad_rstd * rstd.pow(3)
    return (grad_normed * rstd + grad_mean.expand_as(h) / h.shape[-1] * (2.0 * h)).to(x.dtype)


def lean_rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    eps = norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps
    return LeanRMSNormFunction.apply(x, norm.weight, eps)


def computes_llama_rms_norm(module: nn.Module) -> bool:
    """An RMSNorm whose forward is Llama's, compiled to the same bytecode (Mistral, Qwen2/3, Phi-3, ...).

    The class name alone would also take Gemma's (x * (1 + weight)) and OLMo-2's (weight applied before
    the downcast), which compute something else. Reading the compiled code of transformers' LlamaRMSNorm.forward
    relies on its implementation, not its API: this is the only place that does, and tests/train/test_rms_norm.py
    fails if that forward changes (bitwise outputs of the lean norm against it, which norms are patched).
    """
    cls = type(module)
    if not cls.__name__.endswith("RMSNorm") or not isinstance(getattr(module, "weight", None), torch.Tensor):
        return False
    if not (hasattr(module, "variance_epsilon") or hasattr(module, "eps")):
        return False
    ours, llama = getattr(cls.forward, "__code__", None), LlamaRMSNorm.forward.__code__
    if ours is None:
        return False
    names = tuple("variance_epsilon" if name == "eps" else name for name in ours.co_names)
    return (ours.co_code, ours.co_consts, names) == (llama.co_code, llama.co_consts, llama.co_names)


def lean_rms_norms(model: nn.Module) -> int:
    """Give every Llama-style RMSNorm of the model the lean forward; returns how many.

    Includes the trained copies inside peft's ModulesToSaveWrapper (they are modules of the model too).
    Applied to the module's own `forward`, like the tiled MLP, so parameter names do not change.
    """
    norms = [m for m in model.modules() if computes_llama_rms_norm(m)]
    for norm in norms:
        norm.forward = functools.partial(lean_rms_norm, norm)
    return len(norms)
