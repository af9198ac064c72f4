"""Loading a model for training: what its LoRA layers do under autocast."""

import pytest
import torch

from tenfold.train import model as train_model
from tenfold.train.loss import CausalLMLoss
from tenfold.train.model import load_model_for_training


def lora_input_dtypes(model) -> set:
    """Records the dtype of every input the LoRA A matrices see, into the returned set."""
    seen = set()
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            module.register_forward_pre_hook(lambda _module, args: seen.add(args[0].dtype))
    return seen


def bf16_step(model, seed=0):
    """Loss, gradients and bytes autograd saved (each storage once) of one bf16-autocast step without checkpointing."""
    ids = torch.randint(0, model.config.vocab_size, (1, 96), generator=torch.Generator().manual_seed(seed))
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(seed)
    for name, p in model.named_parameters():  # LoRA B starts at zero: make the adapter matter
        if "lora_B" in name:
            p.data.normal_(std=0.05)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = CausalLMLoss(model)(ids, torch.ones_like(ids), torch.ones(1, 96))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss, grads, sum(storages.values())


@pytest.fixture
def bf16_recipe(tiny_recipe):
    return tiny_recipe(**{"train.mixed_precision": "bf16", "model.dtype": "auto",
                          "model.gradient_checkpointing": False, "lora.extra_trainable": []})


def test_under_cpu_autocast_lora_takes_its_bf16_input_as_given_with_the_same_loss_and_gradients(
        bf16_recipe, monkeypatch):
    torch.manual_seed(0)  # LoRA A's initialisation
    model, _ = load_model_for_training(bf16_recipe, torch.device("cpu"))
    seen = lora_input_dtypes(model)
    loss, grads, saved = bf16_step(model)
    assert seen == {torch.bfloat16}  # peft's own check asks about CUDA autocast only: it would upcast to fp32
    monkeypatch.setattr(train_model, "cast_lora_inputs_only_outside_autocast", lambda _model: 0)
    torch.manual_seed(0)
    casting, _ = load_model_for_training(bf16_recipe, torch.device("cpu"))
    seen_casting = lora_input_dtypes(casting)
    casting_loss, casting_grads, casting_saved = bf16_step(casting)
    assert seen_casting == {torch.float32}
    assert torch.equal(loss, casting_loss)  # bf16 -> fp32 -> bf16 is exact
    assert grads.keys() == casting_grads.keys() and all(torch.equal(grads[n], casting_grads[n]) for n in grads)
    assert saved < casting_saved  # the copies autocast made of the fp32 copies, no longer saved


def test_outside_autocast_lora_still_casts_a_bf16_input_to_its_fp32_weights(tiny_recipe):
    recipe = tiny_recipe(**{"train.mixed_precision": "no", "model.dtype": "bfloat16", "lora.extra_trainable": []})
    model, _ = load_model_for_training(recipe, torch.device("cpu"))
    seen = lora_input_dtypes(model)
    ids = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    CausalLMLoss(model)(ids, torch.ones_like(ids), torch.ones(1, 32)).backward()
    assert seen == {torch.float32}
