"""One process of a sequence-parallel measurement (tests/train/test_sequence_parallel.py, benchmarks/
sequence_parallel_memory.py): one sequence's loss, LoRA gradients and step memory, split over
the processes (Ulysses), then whole on this process alone (the 1-process step). Rank 0 saves what it saw."""

import json
import re
import sys

import torch
import torch.distributed as dist

from tenfold.recipe import load_recipe
from tenfold.train import sequence_parallel
from tenfold.train.loss import CausalLMLoss
from tenfold.train.model import load_model_for_training


def resident(field: str) -> int:
    return int(re.search(field + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024


def step(loss_model, batch) -> tuple[float, int, dict]:
    """loss, peak resident growth of forward + backward, trainable gradients."""
    loss_model.zero_grad(set_to_none=True)
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM (Linux >= 4.0)
    before = resident("VmRSS")
    loss = loss_model(**batch)
    loss.backward()
    growth = resident("VmHWM") - before
    return loss.detach(), growth, {n: p.grad for n, p in loss_model.named_parameters() if p.requires_grad}


model_dir, out, length = sys.argv[1], sys.argv[2], int(sys.argv[3])
dist.init_process_group("gloo")
recipe = load_recipe("recipes/tiny-cpu.yaml", {"model.name": model_dir, "model.dtype": "float32"})
torch.manual_seed(0)  # LoRA's initialization: the same on every process (DDP would broadcast it in training)
model, _ = load_model_for_training(recipe, torch.device("cpu"))
loss_model = CausalLMLoss(model)
torch.manual_seed(1)
for name, param in model.named_parameters():
    if "lora_B" in name:  # as after some training: LoRA's zero start would leave lora_A without a gradient
        param.data.normal_(0, 0.02)
generator = torch.Generator().manual_seed(0)
ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
weights = (torch.rand(1, length, generator=generator) < 0.3).float()  # label-sparse, like assistant turns
whole = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_weights": weights}

sequence_parallel.setup(model, dist.get_world_size())
shard = sequence_parallel.shard_batch(whole, pad_token_id=0)
step(loss_model, shard)  # warm-up: first-call allocations are not activations
loss, sp_growth, grads = step(loss_model, shard)
dist.all_reduce(loss)
for g in grads.values():
    dist.all_reduce(g)  # what DDP does to the LoRA gradients (as a sum here)

model.set_attn_implementation("sdpa")  # the same model, one process, the whole sequence
step(loss_model, whole)  # its warm-up too
whole_loss, whole_growth, whole_grads = step(loss_model, whole)
if dist.get_rank() == 0:
    torch.save({"sp": (loss, grads), "whole": (whole_loss, whole_grads)}, out + ".pt")
    open(out + ".json", "w").write(json.dumps({"sp_growth": sp_growth, "whole_growth": whole_growth}))
dist.destroy_process_group()
