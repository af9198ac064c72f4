"""What one real training step does: checkpointing that runs, a bf16 residual stream, the loss's scale."""

import pytest
import torch
import torch.nn.functional as F

from tenfold.io import read_jsonl
from tenfold.models import load_tokenizer
from tenfold.records import encode_record
from tenfold.train import loop
from tenfold.train.batches import collate
from tenfold.train.loss import CausalLMLoss
from tenfold.train.model import load_model_for_training


def decoder_layers(model):
    return model.get_base_model().model.layers


@pytest.fixture
def watched_training(monkeypatch):
    """Runs `train` with hooks on the model it loads; returns what the hooks saw."""
    seen = {"norm_calls": 0, "layer_input_dtypes": set(), "model": None, "initial": None}
    real_load = loop.load_model_for_training

    def load_and_watch(recipe, device):
        model, rope = real_load(recipe, device)
        for layer in decoder_layers(model):
            # a submodule's hook fires in the forward and again in the backward's recompute of the layer
            layer.input_layernorm.register_forward_hook(
                lambda *_: seen.__setitem__("norm_calls", seen["norm_calls"] + 1))
            layer.register_forward_pre_hook(lambda _module, args, kwargs: seen["layer_input_dtypes"].add(
                (args[0] if args else kwargs["hidden_states"]).dtype), with_kwargs=True)
        seen["model"] = model
        seen["initial"] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return model, rope

    monkeypatch.setattr(loop, "load_model_for_training", load_and_watch)
    return seen


def test_a_real_step_recomputes_every_checkpointed_layer(tiny_recipe, watched_training):
    loop.train(tiny_recipe(**{"train.max_steps": 1, "train.batch_size": 1, "train.micro_batch_size": 1}))
    layers = len(decoder_layers(watched_training["model"]))
    assert watched_training["norm_calls"] == 2 * layers  # forward, then the recompute in backward


def test_without_checkpointing_each_layer_runs_once(tiny_recipe, watched_training):
    loop.train(tiny_recipe(**{"train.max_steps": 1, "train.batch_size": 1, "train.micro_batch_size": 1,
                              "model.gradient_checkpointing": False}))
    assert watched_training["norm_calls"] == len(decoder_layers(watched_training["model"]))


def test_bf16_keeps_the_residual_stream_bf16_and_updates_fp32_master_weights(tiny_recipe, watched_training):
    loop.train(tiny_recipe(**{"train.max_steps": 1, "train.batch_size": 1, "train.micro_batch_size": 1,
                              "train.mixed_precision": "bf16", "model.dtype": "auto"}))
    assert watched_training["layer_input_dtypes"] == {torch.bfloat16}
    trained = {n: p for n, p in watched_training["model"].named_parameters() if p.requires_grad}
    assert any("embed_tokens" in n for n in trained) and any("lora_A" in n for n in trained)
    assert {p.dtype for p in trained.values()} == {torch.float32}
    changed = [n for n, p in trained.items() if not torch.equal(p, watched_training["initial"][n])]
    assert any("embed_tokens" in n for n in changed) and any("lora_B" in n for n in changed)


def test_loss_equals_transformers_labels_loss_times_the_token_count(tiny_recipe, toy_data):
    recipe = tiny_recipe(**{"lora.extra_trainable": []})
    model, _ = load_model_for_training(recipe, torch.device("cpu"))
    tokenizer = load_tokenizer(recipe.model.name)

    encoded = [encode_record(r, tokenizer, 512, 0.0) for r in list(read_jsonl(toy_data))[:3]]
    rows = [{"input_ids": torch.tensor(e.input_ids), "weights": torch.tensor(e.weights)} for e in encoded]
    batch = collate(rows, tokenizer.pad_token_id)  # padded to the longest, answers-only weights
    weights = batch["token_weights"]
    assert 0 < int((weights > 0).sum()) < int(batch["attention_mask"].sum())  # really masked, really padded
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # LoRA B starts at zero: make the adapter matter
        if "lora_B" in name:
            p.data.normal_(std=0.05)
    labels = batch["input_ids"].masked_fill(weights == 0, -100)
    ours = CausalLMLoss(model, chunk_size=7)(**batch)
    hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    count = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(ours, hf.loss * count, rtol=1e-5, atol=1e-5)
    # and the reference itself: mean cross-entropy of the shifted logits over the labelled tokens
    logits = hf.logits[:, :-1].float()
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
