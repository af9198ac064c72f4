"""The processes of a run: accelerate's Accelerator as its config asks (DDP, FSDP2, DeepSpeed), and the
trainable state gathered whole from whichever of them holds it sharded.

tenfold adds no sharding of its own: FSDP2 is accelerate's plugin around torch's `fully_shard`, DeepSpeed is
accelerate's engine wrapper, and a sharded state is gathered with torch's distributed state-dict helpers.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from tenfold.errors import UserError

# Rank 0 receives the whole trainable state in CPU memory; the frozen base is never gathered.
GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
SCATTER = StateDictOptions(full_state_dict=True, strict=False)


def make_accelerator(mixed_precision: str, log_with: list[str] | None = None,
                     project_dir: str | None = None) -> Accelerator:
    """accelerate's Accelerator for this process, from its launch config (`accelerate launch --config_file`),
    with the experiment trackers `log_with` (tensorboard's and aim's files in project_dir).

    accelerate turns FSDP on only for GPU-like devices and leaves a CPU run at plain DDP even when its config
    asks for FSDP; torch's fully_shard itself runs on CPU processes with gloo. So on the CPU the config's own
    FSDP plugin is handed to accelerate's state here, and the sharding is still all accelerate's and torch's
    (this is how the 2-process tests run FSDP2 without a GPU).
    """
    # DeepSpeed runs on the CPU through its own CPU accelerator (gloo), which accelerate reaches only with cpu=False.
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not (torch.cuda.is_available() or deepspeed),
                              log_with=log_with or None, project_dir=project_dir)
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants_fsdp and accelerator.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate launch set
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        override_process_state(accelerator, fsdp_plugin=plugin, distributed_type=DistributedType.FSDP)
    if deepspeed and not torch.cuda.is_available() and torch.distributed.is_initialized():
        # DeepSpeed's CPU accelerator joined the processes (gloo), but accelerate counts processes only for the
        # device types it knows and would see one: give its state the real ranks.
        override_process_state(accelerator, num_processes=torch.distributed.get_world_size(),
                               process_index=torch.distributed.get_rank(),
                               local_process_index=int(os.environ.get("LOCAL_RANK", 0)))
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise UserError("FSDP1 is not supported: set fsdp_version: 2 in the accelerate config "
                        "(recipes/accelerate/fsdp2.yaml)")
    return accelerator


# accelerate's process state has no public setter and no public reset: these two functions are the only places
# tenfold reaches into it; tests/train/test_distributed_internals.py fails if accelerate changes what they rely on.

def override_process_state(accelerator: Accelerator, fsdp_plugin: FullyShardedDataParallelPlugin | None = None,
                           **fields) -> None:
    """Write `fields` (distributed_type, ranks) into accelerate's state of this process, and `fsdp_plugin` into
    the accelerator's, where accelerate cannot tell them from the devices (see make_accelerator).

    accelerate keeps that state in two dicts shared by all instances of their class: PartialState's (the
    processes: ranks, device, distributed type; the private `_shared_state`) and AcceleratorState's (a copy of
    it plus precision and plugins), which is each instance's `__dict__`. Both must agree, as in accelerate's own
    FSDP setup (which writes PartialState._shared_state["distributed_type"] the same way).
    """
    if fsdp_plugin is not None:
        accelerator.state.fsdp_plugin = fsdp_plugin
    PartialState._shared_state.update(fields)
    accelerator.state.__dict__.update(fields)


def reset_accelerator_state() -> None:
    """Forget the accelerator's settings (precision, plugins), keep the processes (PartialState).

    accelerate keeps one AcceleratorState a process whose precision cannot change once set; a second train()
    in one process (a notebook, the tests) may want another, and only the private `_reset_state` allows it.
    """
    AcceleratorState._reset_state()


def set_accumulation(accelerator: Accelerator, steps: int, micro_batch_size: int, max_grad_norm: float) -> None:
    """One optimizer step = `steps` micro-batches on each process. Under DeepSpeed the engine owns that boundary
    and the clipping: its config (whose accumulation accelerate launch sets to 1 by default, and which then wins
    over accelerate's own) gets the recipe's values before prepare."""
    accelerator.gradient_accumulation_steps = steps
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        config.update(gradient_accumulation_steps=steps, train_micro_batch_size_per_gpu=micro_batch_size,
                      gradient_clipping=max_grad_norm,
                      train_batch_size=steps * micro_batch_size * accelerator.num_processes)


def is_partitioned(param: torch.Tensor) -> bool:
    """An FSDP2 shard (DTensor) or a ZeRO-3 partitioned parameter (DeepSpeed tags those with `ds_id`)."""
    return isinstance(param, DTensor) or hasattr(param, "ds_id")


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether this process holds only a shard of the trainable weights (FSDP2, ZeRO-3)."""
    return any(is_partitioned(p) for p in model.parameters() if p.requires_grad)


def sharding_report(model: torch.nn.Module) -> str:
    """What FSDP split over the processes: 4-bit base weights and trainable tensors, as counts."""
    from bitsandbytes.nn import Linear4bit

    quantized = [m.weight for m in model.modules() if isinstance(m, Linear4bit)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    return (f"sharded 4-bit weights: {sum(map(is_partitioned, quantized))} of {len(quantized)}, "
            f"trainable tensors: {sum(map(is_partitioned, trainable))} of {len(trainable)}")


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor whole, on rank 0 (other ranks: {}). A collective when the model is sharded:
    every process must call it at the same point."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if any(hasattr(p, "ds_id") for _, p in trainable):
        return gathered_zero3_state(trainable)
    names = {n for n, _ in trainable}
    # ignore_frozen_params still returns the frozen 4-bit weights' quantization statistics (not parameters)
    return {n: t for n, t in get_model_state_dict(model, options=GATHER).items() if n in names}


def gathered_zero3_state(trainable: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """ZeRO-3's partitions gathered one parameter at a time (torch's state-dict helpers see only the empty
    local placeholders DeepSpeed leaves); the frozen base stays partitioned."""
    import deepspeed

    whole = {}
    for name, param in trainable:
        with deepspeed.zero.GatheredParameters([param]):  # no modifier rank: read only, released on exit
            if torch.distributed.get_rank() == 0:
                whole[name] = param.detach().to("cpu", copy=True)
    return whole


def full_optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The optimizer state keyed by parameter name, whole, on rank 0; a collective like full_trainable_state."""
    return get_optimizer_state_dict(model, optimizer, options=GATHER)


def load_full_state(model: torch.nn.Module, optimizer, weights: dict, optimizer_state: dict) -> None:
    """Load whole states (from full_trainable_state / full_optimizer_state) into this process's shards."""
    set_model_state_dict(model, weights, options=SCATTER)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=SCATTER)
