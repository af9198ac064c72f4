"""Tiled MLP: run each decoder layer's MLP over the sequence a tile of positions at a time.

Gradient checkpointing keeps one tensor per layer, but the backward's recompute of a layer still
holds the whole sequence's MLP intermediates (gate, up, act: 3 x 14,336 x L x 2 bytes for
Llama-3-8B, 6.9 GB at 80K tokens), and from some length on they are what bounds the context.
The MLP is position-wise, so tiling along the sequence is exact: the forward runs the tiles
without autograd and saves only the input; the backward recomputes one tile at a time with
autograd and backpropagates it, so only one tile's intermediates are ever alive.

The cost is one more MLP forward per layer (forward, the layer's recompute, the tiles' recompute);
the measured overhead and the default tile are at `ModelSettings.mlp_tile_tokens` (tenfold.recipe).
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from tenfold.errors import RecipeError


class TiledMLPFunction(torch.autograd.Function):
    """forward(x) of a position-wise module, tile by tile; `params` are its trainable parameters."""

    @staticmethod
    def forward(ctx, forward, tile_tokens, x, *params):
        device = x.device.type
        # The backward runs outside the forward's autocast and RNG state: capture both to recompute the same.
        ctx.autocast = dict(device_type=device, enabled=torch.is_autocast_enabled(device),
                            dtype=torch.get_autocast_dtype(device))
        ctx.rng = rng_state(x.device)
        ctx.forward, ctx.tile_tokens, ctx.params = forward, tile_tokens, list(params)
        ctx.save_for_backward(x)  # only x: the params are leaves, and save_on_cpu would copy them to the CPU
        flat = x.reshape(1, -1, x.shape[-1])
        out = None
        for start in range(0, flat.shape[1], tile_tokens):
            y = forward(flat[:, start:start + tile_tokens])
            if not isinstance(y, torch.Tensor):
                raise RecipeError(f"a tiled MLP must return one tensor, not {type(y).__name__} (a router's "
                                  f"outputs?); set model.mlp_tile_tokens to 0 for this model")
            if out is None:  # the output's dtype is the MLP's (autocast's), not necessarily the input's
                out = y.new_empty(flat.shape[:-1] + y.shape[-1:])
            out[:, start:start + y.shape[1]] = y
        return out.reshape(x.shape[:-1] + out.shape[-1:])

    @staticmethod
    def backward(ctx, grad_out):
        (x,), params = ctx.saved_tensors, ctx.params
        flat = x.reshape(1, -1, x.shape[-1])
        grad_flat = grad_out.reshape(1, -1, grad_out.shape[-1])
        grad_x = torch.empty_like(flat) if ctx.needs_input_grad[2] else None
        grad_params = [None] * len(params)
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), \
                torch.enable_grad(), torch.autocast(**ctx.autocast):
            set_rng_state(x.device, ctx.rng)  # dropout inside the MLP draws the forward's masks again
            for start in range(0, flat.shape[1], ctx.tile_tokens):
                tile = flat[:, start:start + ctx.tile_tokens].detach().requires_grad_(grad_x is not None)
                inputs = ([tile] if grad_x is not None else []) + params
                grad_y = grad_flat[:, start:start + tile.shape[1]]
                grads = torch.autograd.grad(ctx.forward(tile), inputs, grad_y, allow_unused=True)
                if grad_x is not None:
                    grad_x[:, start:start + tile.shape[1]] = grads[0]
                    grads = grads[1:]
                for i, g in enumerate(grads):
                    if g is not None:
                        grad_params[i] = g if grad_params[i] is None else grad_params[i].add_(g)
        grad_x = grad_x.reshape(x.shape) if grad_x is not None else None
        return None, None, grad_x, *grad_params


def rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def tiled_forward(mlp: nn.Module, forward, tile_tokens: int, x: torch.Tensor) -> torch.Tensor:
    if x.numel() // x.shape[-1] <= tile_tokens:
        return forward(x)
    params = [p for p in mlp.parameters() if p.requires_grad]
    return TiledMLPFunction.apply(forward, tile_tokens, x, *params)


def decoder_mlps(model: nn.Module) -> list[nn.Module]:
    """The `mlp` of every block of the model's layer lists (Llama, Mistral, Qwen, Gemma, GPT-2, ...)."""
    return [layer.mlp for layers in model.modules() if isinstance(layers, nn.ModuleList)
            for layer in layers if isinstance(getattr(layer, "mlp", None), nn.Module)]


def tile_mlps(model: nn.Module, tile_tokens: int) -> int:
    """Run every decoder layer's MLP in tiles of `tile_tokens` positions (0: untiled again).

    Sequences of at most `tile_tokens` positions (over the whole batch) run the MLP untouched.
    Applied to the module's own `forward` rather than by wrapping it, so parameter names (and saved
    adapters) do not change. Returns the number of MLPs tiled.
    """
    mlps = decoder_mlps(model)
    if tile_tokens > 0 and not mlps:  # a warning, not an error: tiling is on by default
        warnings.warn(f"{type(model).__name__} has no decoder layers with an `mlp` module: its MLPs run "
                      f"untiled (model.mlp_tile_tokens {tile_tokens} has no effect)")
    for mlp in mlps:  # re-tiling starts from the original forward
        untiled = mlp.__dict__.setdefault("_untiled_forward", mlp.forward)
        mlp.forward = functools.partial(tiled_forward, mlp, untiled, tile_tokens) if tile_tokens else untiled
    return len(mlps) if tile_tokens > 0 else 0
