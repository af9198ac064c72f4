"""Ulysses sequence parallelism: each sequence split over `train.sequence_parallel` processes.

Each process holds a contiguous slice of every sequence (its global positions, so RoPE is unchanged). Around
attention an all-to-all trades the sequence slice for a slice of the heads, so every process attends over the
whole sequence for its heads; a second all-to-all trades back. Everything else (embedding, MLP, norms, the
label-sparse loss) runs on the slice, so activations shrink with the degree. The losses of the slices sum to
the sequence's loss; the LoRA gradients are summed by the data-parallel engine (DDP) like any other batch's.

Why glue of our own: the engines that ship Ulysses do not fit this run. DeepSpeed's ALST
(`UlyssesSPAttentionHF`, what accelerate's ParallelismConfig(sp_size) uses) works only inside a DeepSpeed
engine, so not with DDP or FSDP2; torch's context parallel is ring attention over SDPA's CUDA kernels and
accelerate gates it to FSDP2 on GPUs. What remains is the part every engine leaves to a model: two
autograd-aware all_to_all_single calls around transformers' own attention, registered through its
AttentionInterface (gloo supports all_to_all_single, so the CPU tests run it).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_to_all_single
from transformers import AttentionInterface, AttentionMaskInterface

from tenfold.errors import RecipeError

ATTENTION = "tenfold_ulysses"
_group: dist.ProcessGroup | None = None  # this process's sequence-parallel group


def setup(model, degree: int) -> tuple[int, int]:
    """Split sequences over groups of `degree` consecutive ranks; returns (data-parallel rank, size).

    Every process calls this (new_group is collective). The model's attention becomes the Ulysses one.
    """
    global _group
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % degree:
        raise RecipeError(f"train.sequence_parallel {degree} does not divide the {world} processes")
    config = model.config
    if config.num_attention_heads % degree:
        raise RecipeError(f"train.sequence_parallel {degree} must divide the model's "
                          f"{config.num_attention_heads} attention heads")
    for start in range(0, world, degree):
        group = dist.new_group(list(range(start, start + degree)))
        if start <= rank < start + degree:
            _group = group
    AttentionInterface.register(ATTENTION, ulysses_attention)
    AttentionMaskInterface.register(ATTENTION, no_mask)
    model.set_attn_implementation(ATTENTION)
    return rank // degree, world // degree


def no_mask(*args, **kwargs):
    """The attention is causal over the whole sequence; padding sits at the end and carries no loss."""
    return None


def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Send slice r of `scatter_dim` to rank r; concatenate what every rank sent along `gather_dim`."""
    chunks = torch.stack(x.chunk(dist.get_world_size(_group), dim=scatter_dim)).contiguous()
    received = all_to_all_single(torch.empty_like(chunks), chunks, group=_group)
    return torch.cat(received.unbind(0), dim=gather_dim)


def ulysses_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):  # noqa: ARG001
    """transformers' attention signature: [batch, heads, local positions, head dim] in, [b, t, h, d] out.
    The mask goes unused: the attention is causal over the whole sequence (see no_mask)."""
    degree = dist.get_world_size(_group)
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads % degree:  # fewer key/value heads than processes: give each process whole groups
        key, value = (x.repeat_interleave(heads // kv_heads, dim=1) for x in (key, value))
    query, key, value = (_all_to_all(x, scatter_dim=1, gather_dim=2) for x in (query, key, value))
    if key.shape[1] != query.shape[1]:
        key, value = (x.repeat_interleave(query.shape[1] // x.shape[1], dim=1) for x in (key, value))
    out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                         dropout_p=dropout if module.training else 0.0)
    return _all_to_all(out, scatter_dim=2, gather_dim=1).transpose(1, 2).contiguous(), None


def shard_batch(batch: dict[str, torch.Tensor], pad_token_id: int) -> dict[str, torch.Tensor]:
    """This process's slice of a collated micro-batch: inputs, global positions, and the next-token targets
    and weights shifted over the whole sequence before slicing (a slice's last position predicts the next
    slice's first token)."""
    degree, rank = dist.get_world_size(_group), dist.get_rank(_group)
    input_ids, weights, mask = batch["input_ids"], batch["token_weights"], batch["attention_mask"]
    length = -(-input_ids.shape[1] // degree) * degree
    pad = length - input_ids.shape[1]
    input_ids = F.pad(input_ids, (0, pad), value=pad_token_id)
    targets = F.pad(input_ids[:, 1:], (0, 1), value=pad_token_id)
    target_weights = F.pad(weights[:, 1:], (0, pad + 1))
    mask = F.pad(mask, (0, pad))
    part = slice(rank * length // degree, (rank + 1) * length // degree)
    positions = torch.arange(length, device=input_ids.device)[part].expand(input_ids.shape[0], -1)
    return {"input_ids": input_ids[:, part], "position_ids": positions, "target_ids": targets[:, part],
            "token_weights": target_weights[:, part], "attention_mask": mask[:, part]}
