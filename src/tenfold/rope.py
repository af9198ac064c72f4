"""RoPE base and scaling, written into a model config in both layouts transformers has used.

transformers 5 reads `config.rope_parameters` ({"rope_type", "rope_theta", ...}); transformers 4,
vLLM and most other readers of config.json look at top-level `rope_theta` and `rope_scaling`.
`apply_rope` writes both, so a trained or merged model means the same thing to every reader.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from tenfold.errors import UserError
from tenfold.recipe import RopeSettings

# Keys each scaling type reads besides rope_theta (transformers' modeling_rope_utils).
_SCALING_KEYS = {
    "linear": ("factor",),
    "dynamic": ("factor",),  # its original length is max_position_embeddings itself
    "yarn": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
}


def current_rope(config) -> dict:
    """The config's RoPE parameters in the transformers 5 layout."""
    params = getattr(config, "rope_parameters", None)
    if params:
        return dict(params)
    params = dict(getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.pop("type", "default"))
    params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return params


def apply_rope(config, rope: RopeSettings, max_length: int | None = None) -> dict:
    """Write the requested RoPE base/scaling into `config` (both layouts); returns the new parameters.

    With `rope.scaling == "keep"` the model's own scaling (e.g. Llama-3.1's llama3 scaling) is kept
    and only the base changes. `max_length` is the length the model is trained at: it is recorded with
    the model's native length (see `model_lengths`), and `max_position_embeddings` grows to it when larger.
    """
    if max_length:
        config.tenfold_lengths = {"native_length": config.max_position_embeddings, "training_length": max_length}
    old = current_rope(config)
    theta = float(rope.theta) if rope.theta is not None else float(old["rope_theta"])
    if rope.theta_factor is not None:
        theta = float(old["rope_theta"]) * rope.theta_factor
    if rope.scaling == "keep":
        params = {**old, "rope_theta": theta}
    else:
        params = {"rope_type": "default" if rope.scaling == "none" else rope.scaling, "rope_theta": theta}
        for key in _SCALING_KEYS.get(params["rope_type"], ()):
            if key == "original_max_position_embeddings":
                params[key] = rope.original_max_position_embeddings or config.max_position_embeddings
            else:
                params[key] = float(getattr(rope, key))
    config.rope_parameters = params
    config.rope_theta = theta  # serialized as the top-level v4 key; rope_scaling is an alias in v5, see below
    if max_length and max_length > config.max_position_embeddings and params["rope_type"] != "dynamic":
        config.max_position_embeddings = max_length
    return params


def model_lengths(config) -> dict:
    """{"native_length", "training_length"}: the context the model came with (before tenfold trained it
    longer, as recorded in its config, which a merged model's config.json keeps) and the length tenfold
    trained it at (None for a model tenfold did not train)."""
    recorded = getattr(config, "tenfold_lengths", None) or {}
    return {"native_length": recorded.get("native_length", config.max_position_embeddings),
            "training_length": recorded.get("training_length")}


def write_rope_to_config_file(path: str | Path, params: dict) -> None:
    """Add the transformers 4 keys (rope_theta, rope_scaling) to a saved config.json.

    transformers 5 treats `config.rope_scaling` as an alias of `rope_parameters`, so the v4 key
    can only be written into the file itself; v5 reads rope_parameters and ignores the copy.
    """
    path = Path(path)
    config = json.loads(path.read_text())
    config["rope_parameters"] = params
    config["rope_theta"] = params["rope_theta"]
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    config["rope_scaling"] = scaling if params["rope_type"] != "default" else None
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def rotary_embedding(model) -> torch.nn.Module:
    """The live model's rotary embedding module (the first found): its `inv_freq` and `attention_scaling`."""
    for name, module in model.named_modules():
        if hasattr(module, "inv_freq") and "rotary" in name:
            return module
    raise UserError("no rotary embedding module with an inv_freq buffer in this model")


def rotary_inv_freq(model) -> torch.Tensor:
    """The inverse frequencies the live model rotates with."""
    return rotary_embedding(model).inv_freq.detach().float().cpu()


def rope_frequencies(config, params: dict) -> tuple[torch.Tensor, float]:
    """(inverse frequencies, attention scaling) of a model of `config`'s shape under the RoPE `params`, from
    transformers' own initialisers (ROPE_INIT_FUNCTIONS), so every rope type is computed as the models do."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = copy.deepcopy(config)
    params = dict(params)
    if params["rope_type"] == "default":  # transformers 5 keeps this one in each model's rotary class: it is
        params.update(rope_type="linear", factor=1.0)  # linear scaling by 1, the same frequencies
    if params["rope_type"] not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"transformers knows no rope type {params['rope_type']!r} "
                         f"(known: default, {', '.join(ROPE_INIT_FUNCTIONS)})")
    config.rope_parameters = params
    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu")
    return inv_freq.float(), float(attention_scaling)
