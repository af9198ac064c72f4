"""The lean RMSNorm: the stock norm's outputs and gradients, half its saved bytes under bf16, a real step."""

import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from tenfold.train import loop, rms_norm
from tenfold.train.model import load_model_for_training
from tenfold.train.rms_norm import LeanRMSNormFunction, lean_rms_norm, lean_rms_norms

SHAPE = (2, 37, 64)


def llama_norm(weight_dtype: torch.dtype, trained: bool) -> LlamaRMSNorm:
    norm = LlamaRMSNorm(SHAPE[-1], eps=1e-6)
    torch.manual_seed(2)
    norm.weight.data = (1 + 0.1 * torch.randn(SHAPE[-1])).to(weight_dtype)
    norm.weight.requires_grad_(trained)
    return norm


def run(forward, norm: nn.Module, x_dtype: torch.dtype, autocast: bool) -> tuple:
    """Output, input gradient and weight gradient of one forward and backward on fixed random data."""
    torch.manual_seed(3)
    x = (3 * torch.randn(SHAPE)).to(x_dtype).requires_grad_()
    norm.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = forward(norm, x)
    y.backward(torch.randn(y.shape).to(y.dtype))
    return y, x.grad, norm.weight.grad


# (input dtype, weight dtype, weight trained, bf16 autocast): fp32; a frozen bf16 base under autocast; a
# trained norm (fp32 master weight) under autocast, whose output promotes to fp32; a trained bf16 weight.
CASES = [(torch.float32, torch.float32, True, False), (torch.bfloat16, torch.bfloat16, False, True),
         (torch.bfloat16, torch.float32, True, True), (torch.bfloat16, torch.bfloat16, True, True)]


@pytest.mark.parametrize("chunk_rows", [None, 5])  # one chunk; 15 chunks of 5 rows, the last one of 4
@pytest.mark.parametrize("x_dtype, weight_dtype, trained, autocast", CASES)
def test_outputs_and_gradients_are_the_stock_norms_bit_for_bit(x_dtype, weight_dtype, trained, autocast,
                                                                chunk_rows, monkeypatch):
    """Bitwise, in fp32 and bf16 alike (stricter than the 1e-6 asked of fp32): the forward runs the stock
    ops, and the backward the ops autograd runs for them, in the same dtypes and order, also by chunks."""
    if chunk_rows:
        monkeypatch.setattr(rms_norm, "CHUNK_ELEMENTS", chunk_rows * SHAPE[-1])
    norm = llama_norm(weight_dtype, trained)
    stock = run(lambda m, x: m(x), norm, x_dtype, autocast)
    lean = run(lean_rms_norm, norm, x_dtype, autocast)
    assert (stock[2] is not None) == trained and (lean[2] is not None) == trained
    for name, ours, theirs in zip(("output", "input grad", "weight grad"), lean, stock):
        if theirs is not None:
            assert ours.dtype == theirs.dtype, name
            assert torch.equal(ours, theirs), f"{name}: max diff {(ours.float() - theirs).abs().max()}"


def saved_bytes(forward) -> int:
    """Bytes autograd saves for the backward while `forward()` runs, each storage counted once."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


class LargestFloat32(TorchDispatchMode):
    """The most elements of any fp32 tensor an op returns while the mode is on."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.most = max(self.most, t.numel())
        return out


def test_under_bf16_the_fp32_temporaries_exist_one_chunk_at_a_time(monkeypatch):
    """The upcast input and its products, in the forward and the input's gradient, are one chunk's rows,
    never the whole sequence's (at width 1,024 they were a step's peak)."""
    monkeypatch.setattr(rms_norm, "CHUNK_ELEMENTS", 8 * SHAPE[-1], raising=False)
    norm = llama_norm(torch.bfloat16, trained=False)
    x = torch.randn(SHAPE, dtype=torch.bfloat16, requires_grad=True)
    forward, backward = LargestFloat32(), LargestFloat32()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with forward:
            y = lean_rms_norm(norm, x)
        with backward:
            y.backward(torch.ones_like(y))
    rows = math.prod(SHAPE[:-1])
    assert forward.most == backward.most == 8 * SHAPE[-1], (forward.most, backward.most, rows * SHAPE[-1])


@pytest.mark.parametrize("weight_dtype, trained", [(torch.bfloat16, False), (torch.float32, True)])
def test_under_bf16_a_norm_saves_only_its_bf16_input_and_rstd(weight_dtype, trained):
    x = torch.randn(SHAPE, dtype=torch.bfloat16, requires_grad=True)
    bound = x.numel() * 2 + math.prod(SHAPE[:-1]) * 4  # the input as given, an fp32 rstd per row
    stock, model = llama_norm(weight_dtype, trained), nn.Sequential(llama_norm(weight_dtype, trained))
    assert lean_rms_norms(model) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert saved_bytes(lambda: stock(x)) > bound  # its fp32 upcast of the input: twice the input's bytes
        assert saved_bytes(lambda: model(x)) <= bound


def test_only_norms_that_compute_llamas_are_patched():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    norms = nn.ModuleList([LlamaRMSNorm(8), Qwen2RMSNorm(8), GemmaRMSNorm(8), Olmo2RMSNorm(8), nn.LayerNorm(8)])
    assert lean_rms_norms(norms) == 2  # Gemma's scales by 1 + weight, OLMo-2's before the downcast
    assert [getattr(m.forward, "func", None) is lean_rms_norm for m in norms] == [True, True, False, False, False]


def test_training_models_get_lean_norms_including_peft_trained_copies(tiny_recipe):
    recipe = tiny_recipe(**{"train.mixed_precision": "bf16", "model.dtype": "auto",
                            "lora.extra_trainable": ["embed_tokens", "input_layernorm"]})
    model, _ = load_model_for_training(recipe, torch.device("cpu"))
    norms = {n: m for n, m in model.named_modules() if isinstance(m, LlamaRMSNorm)}
    trained = [n for n in norms if ".modules_to_save." in n]
    assert len(trained) == model.config.num_hidden_layers  # the wrapped input norms' trained copies
    assert all(norms[n].weight.requires_grad and norms[n].weight.dtype == torch.float32 for n in trained)
    assert all(m.forward.func is lean_rms_norm for m in norms.values()), sorted(norms)

    layer = model.get_base_model().model.layers[0]
    x = torch.randn(2, 37, model.config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            assert saved_bytes(lambda: norm(x)) <= x.numel() * 2 + 2 * 37 * 4


def test_a_bf16_step_with_trained_norms_trains(tiny_recipe, monkeypatch):
    seen = {}
    real_load = loop.load_model_for_training

    def load_and_keep(recipe, device):
        model, rope = real_load(recipe, device)
        seen["model"], seen["initial"] = model, {n: p.detach().clone() for n, p in model.named_parameters()}
        return model, rope

    calls = []
    real_apply = LeanRMSNormFunction.apply
    monkeypatch.setattr(LeanRMSNormFunction, "apply", lambda *args: calls.append(1) or real_apply(*args))
    monkeypatch.setattr(loop, "load_model_for_training", load_and_keep)
    summary = loop.train(tiny_recipe(**{
        "train.max_steps": 2, "train.mixed_precision": "bf16", "model.dtype": "auto",
        "lora.extra_trainable": ["embed_tokens", "input_layernorm"]}))
    assert calls and all(math.isfinite(loss) for loss in summary["losses"])
    changed = {n for n, p in seen["model"].named_parameters() if not torch.equal(p, seen["initial"][n])}
    for part in ("embed_tokens", "lora_B", "input_layernorm.modules_to_save"):
        assert any(part in n for n in changed), part
