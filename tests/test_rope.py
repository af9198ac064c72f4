"""check_rope: the live rotary embedding is held against transformers' own RoPE initialisers, for every
rope.scaling a recipe allows; and those initialisers still compute what tenfold relies on."""

import typing

import pytest
import torch

from tenfold.models import check_rope, load_model
from tenfold.recipe import RopeSettings
from tenfold.rope import rope_frequencies, rotary_embedding
from tenfold.toy import llama_config

SCALINGS = ["none", "linear", "dynamic", "yarn", "llama3"]


def test_every_scaling_a_recipe_allows_is_tested_here():
    allowed = typing.get_args(typing.get_type_hints(RopeSettings)["scaling"])
    assert set(allowed) - {"keep"} == set(SCALINGS)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_check_rope_passes_the_loaded_model_and_catches_one_that_rotates_otherwise(tiny_model_dir, scaling):
    model, params = load_model(str(tiny_model_dir), RopeSettings(theta=2e5, scaling=scaling, factor=4.0),
                               max_length=1024)  # load_model runs check_rope itself
    assert params["rope_type"] == ("default" if scaling == "none" else scaling)
    rotary = rotary_embedding(model)
    rotary.inv_freq.mul_(1.001)  # a rotary embedding built from other parameters than the config says
    with pytest.raises(RuntimeError, match="frequencies other than"):
        check_rope(model, params)
    rotary.inv_freq.div_(1.001)
    check_rope(model, params)
    if scaling in ("linear", "yarn", "llama3"):  # the factor shows in the frequencies (dynamic's only past 1024)
        with pytest.raises(RuntimeError, match="frequencies other than"):
            check_rope(model, {**params, "factor": 2.0})
    with pytest.raises(RuntimeError, match="overrode the requested RoPE"):
        check_rope(model, {**params, "rope_theta": 1e6})


def test_check_rope_catches_yarns_attention_scaling(tiny_model_dir):
    model, params = load_model(str(tiny_model_dir), RopeSettings(theta=2e5, scaling="yarn", factor=4.0))
    rotary = rotary_embedding(model)
    assert rotary.attention_scaling > 1.0  # yarn scales attention by 0.1 ln(factor) + 1
    rotary.attention_scaling = 1.0
    with pytest.raises(RuntimeError, match="scales attention"):
        check_rope(model, params)


def test_transformers_initialisers_compute_the_frequencies_tenfold_relies_on():
    """Default and linear against the formula, llama3 against its definition (Llama-3.1: wavelengths beyond
    the original length divided by the factor, those under original / high_freq_factor kept)."""
    config = llama_config(vocab_size=16, hidden_size=64, num_attention_heads=2, num_key_value_heads=1,
                          max_position_embeddings=1024)
    dim = 32
    formula = 1.0 / 2e5 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    default, scale = rope_frequencies(config, {"rope_type": "default", "rope_theta": 2e5})
    torch.testing.assert_close(default.double(), formula, rtol=1e-6, atol=0)
    assert scale == 1.0
    linear, _ = rope_frequencies(config, {"rope_type": "linear", "rope_theta": 2e5, "factor": 4.0})
    torch.testing.assert_close(linear.double(), formula / 4, rtol=1e-6, atol=0)
    llama3, _ = rope_frequencies(config, {"rope_type": "llama3", "rope_theta": 2e5, "factor": 8.0,
                                          "original_max_position_embeddings": 256, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0})
    wavelength = 2 * torch.pi / formula
    long, short = wavelength > 256, wavelength < 256 / 4
    assert long.any() and short.any()
    torch.testing.assert_close(llama3.double()[long], formula[long] / 8, rtol=1e-6, atol=0)
    torch.testing.assert_close(llama3.double()[short], formula[short], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="no rope type 'spiral'"):
        rope_frequencies(config, {"rope_type": "spiral", "rope_theta": 2e5})
