"""Tiled MLP: the same loss and gradients as the untiled MLP, with only a tile of positions at a time."""

from contextlib import nullcontext

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from tenfold.errors import RecipeError
from tenfold.toy import build_model
from tenfold.train import loop
from tenfold.train.loss import CausalLMLoss
from tenfold.train.model import load_model_for_training
from tenfold.train.tiled_mlp import TiledMLPFunction, decoder_mlps, tile_mlps

LENGTH = 37


def batch(vocab_size: int) -> dict:
    """Two sequences, the second padded: 74 positions, which no tile size of the tests divides."""
    torch.manual_seed(1)
    input_ids = torch.randint(0, vocab_size, (2, LENGTH))
    attention_mask = torch.ones(2, LENGTH, dtype=torch.long)
    attention_mask[1, 30:] = 0
    token_weights = attention_mask.float()
    token_weights[0, :5] = 0.5
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_weights": token_weights}


def loss_and_grads(model, inputs, offload: bool = False) -> tuple[torch.Tensor, dict]:
    """The step's loss, every trainable gradient and the gradient of the decoder's input embeddings."""
    model.zero_grad(set_to_none=True)
    seen = {}

    def keep_grad(module, args, output):
        output.retain_grad()
        seen["embeds"] = output

    hook = model.get_input_embeddings().register_forward_hook(keep_grad)
    with torch.autograd.graph.save_on_cpu() if offload else nullcontext():
        loss = CausalLMLoss(model)(**inputs)
    loss.backward()
    hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    grads["input embeddings"] = seen["embeds"].grad.clone()
    return loss.detach(), grads


def trained_model(tiny_recipe, **overrides):
    recipe = tiny_recipe(**{"model.mlp_tile_tokens": 0, **overrides})
    model, _ = load_model_for_training(recipe, torch.device("cpu"))
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # LoRA B starts at zero: make every adapter matter
        if "lora_B" in name:
            p.data.normal_(std=0.05)
    return model


ATTENTION, MLP = ["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("targets", [ATTENTION, MLP])
@pytest.mark.parametrize("offload", [False, True])
def test_tiled_loss_and_gradients_equal_untiled(tiny_recipe, targets, offload):
    model = trained_model(tiny_recipe, **{"lora.targets": targets})
    assert model.get_base_model().model.gradient_checkpointing
    inputs = batch(model.config.vocab_size)
    ref_loss, ref_grads = loss_and_grads(model, inputs, offload)
    assert any("embed_tokens" in n for n in ref_grads)
    assert any("lora_A" in n and any(t in n for t in targets) for n in ref_grads)
    for tile_tokens in (5, 16, 50, 73):
        assert tile_mlps(model, tile_tokens) == 2
        loss, grads = loss_and_grads(model, inputs, offload)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
        assert grads.keys() == ref_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-5,
                                       msg=lambda m: f"{name}: {m}")  # noqa: B023 (called right here)


@pytest.fixture
def gate_proj_inputs(monkeypatch):
    """Runs `train` with hooks on the model it loads; returns the positions gate_proj received per call,
    with whether autograd was recording (the tiles' recompute in backward), and the sequence lengths."""
    seen = {"gate_proj": [], "lengths": []}
    real_load = loop.load_model_for_training

    def load_and_watch(recipe, device):
        model, rope = real_load(recipe, device)
        for mlp in decoder_mlps(model):
            mlp.gate_proj.register_forward_pre_hook(lambda _module, args: seen["gate_proj"].append(
                (args[0].numel() // args[0].shape[-1], torch.is_grad_enabled())))
        model.get_input_embeddings().register_forward_pre_hook(
            lambda _module, args: seen["lengths"].append(args[0].numel()))
        return model, rope

    monkeypatch.setattr(loop, "load_model_for_training", load_and_watch)
    return seen


@pytest.mark.parametrize("tile_tokens", [0, 16])
def test_a_real_step_runs_the_mlp_a_tile_at_a_time(tiny_recipe, gate_proj_inputs, tile_tokens):
    loop.train(tiny_recipe(**{"train.max_steps": 1, "train.batch_size": 1, "train.micro_batch_size": 1,
                              "model.mlp_tile_tokens": tile_tokens}))
    (length,) = gate_proj_inputs["lengths"]
    assert length > 4 * 16
    positions = [n for n, _ in gate_proj_inputs["gate_proj"]]
    recomputed = [n for n, grad in gate_proj_inputs["gate_proj"] if grad]
    if tile_tokens:
        assert max(positions) <= tile_tokens
        assert sum(recomputed) == 2 * length  # backward: every position of both layers, tile by tile
    else:
        assert max(positions) == length


def test_a_recipe_with_tiles_trains_like_one_without(tiny_recipe, tmp_path):
    runs = {}
    for tile_tokens in (0, 24):
        recipe = tiny_recipe(**{"train.max_steps": 2, "model.mlp_tile_tokens": tile_tokens,
                                "lora.targets": ["q_proj", "v_proj", "gate_proj", "down_proj"],
                                "train.output_dir": str(tmp_path / f"tiles-{tile_tokens}")})
        runs[tile_tokens] = loop.train(recipe)
    assert runs[24]["steps"] == 2
    assert runs[24]["losses"] == pytest.approx(runs[0]["losses"], rel=1e-5)


def tiny_llama(num_layers: int = 2) -> LlamaForCausalLM:
    model = build_model(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                        num_attention_heads=2, num_key_value_heads=1, rope_theta=10000.0,
                        max_position_embeddings=2048).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def test_the_backward_recomputes_under_the_forwards_autocast():
    model = tiny_llama()
    dtypes = []
    for mlp in decoder_mlps(model):
        mlp.gate_proj.register_forward_hook(
            lambda _module, _args, out: dtypes.append((out.dtype, torch.is_grad_enabled())))
    tile_mlps(model, 10)
    inputs = batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = CausalLMLoss(model)(**inputs)
    loss.backward()  # outside autocast, as the training loop does
    assert {dtype for dtype, grad in dtypes if grad} == {torch.bfloat16}


def test_dropout_inside_the_mlp_sees_the_forwards_masks_in_backward():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.GELU(), nn.Linear(16, 8))
    x = torch.randn(1, 23, 8, requires_grad=True)
    params = list(mlp.parameters())
    torch.manual_seed(5)  # the reference: the same tiles in plain autograd, so the same dropout masks
    ref = torch.cat([mlp(x[:, start:start + 7]) for start in range(0, 23, 7)], dim=1)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *params])
    torch.manual_seed(5)
    out = TiledMLPFunction.apply(mlp.forward, 7, x, *params)
    grads = torch.autograd.grad(out.square().sum(), [x, *params])
    torch.testing.assert_close(out, ref)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad)


def test_short_sequences_run_untiled_and_models_it_cannot_tile_are_named():
    model = tiny_llama(num_layers=1)
    calls = []  # (positions, grad enabled): a tiled forward runs its tiles without autograd
    model.model.layers[0].mlp.gate_proj.register_forward_pre_hook(
        lambda _module, args: calls.append((args[0].shape[1], torch.is_grad_enabled())))
    tile_mlps(model, LENGTH)
    model(input_ids=torch.zeros(1, LENGTH, dtype=torch.long))
    model(input_ids=torch.zeros(1, LENGTH + 1, dtype=torch.long))
    assert calls == [(LENGTH, True), (LENGTH, False), (1, False)]
    with pytest.warns(UserWarning, match="mlp_tile_tokens 8 has no effect"):
        assert tile_mlps(nn.Linear(2, 2), 8) == 0
    block = nn.Module()
    block.mlp = RouterMLP()
    tile_mlps(nn.ModuleList([block]), 4)
    with pytest.raises(RecipeError, match="set model.mlp_tile_tokens to 0"):
        block.mlp(torch.zeros(1, 5, 2))


class RouterMLP(nn.Module):
    """Like GPT-OSS's MLP: the hidden states and the router's scores."""

    def forward(self, x):
        return x, None
