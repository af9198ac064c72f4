"""The language-model loss without the [sequence, vocab] logits.

An 80K-token sequence with Llama-3's 128K vocabulary would need 80K x 128K x 4 bytes = 42 GB of
fp32 logits, and as much again for their gradient. Here the LM head runs only at positions that
carry a loss weight, a chunk of rows at a time, and each chunk's gradient is computed right away
in the forward pass (softmax minus one-hot, times the weights), so nothing vocabulary-sized is
kept for backward and no chunk is recomputed. Peak extra memory is one chunk of logits.

Written by hand because transformers computes full logits (or `logits_to_keep` of them) and the
fused kernels that avoid it (Liger, Cut Cross-Entropy) are CUDA/Triton-only and ignore
per-token weights, which the recipe's `data.context_weight` needs.
"""

from __future__ import annotations

import torch
from torch import nn

LOGITS_CHUNK_BYTES = 64 * 2**20


def default_chunk_size(vocab_size: int) -> int:
    return max(1, LOGITS_CHUNK_BYTES // (4 * vocab_size))


class _LabelSparseCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(hidden_i @ weight.T, target_i), with gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, chunk_size):
        need_hidden_grad, need_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        device = hidden.device.type
        # Under autocast the LM head runs in the autocast dtype (bf16), like the model's other matmuls;
        # the softmax and the loss stay in fp32.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            n_rows, vocab = hidden.shape[0], weight.shape[0]
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
            grad_weight = (torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                           if need_weight_grad else None)
            # One logits buffer reused by every chunk: a fresh 64 MB tensor a chunk costs page faults
            # that took longer than the elementwise work itself on the CPU.
            rows = min(chunk_size, n_rows)
            logits_buffer = torch.empty(rows, vocab, dtype=torch.float32, device=hidden.device)
            low_buffer = (logits_buffer if dtype == torch.float32
                          else torch.empty(rows, vocab, dtype=dtype, device=hidden.device))
            for start in range(0, n_rows, chunk_size):
                h = hidden[start:start + chunk_size].to(dtype)
                n = h.shape[0]
                target = targets[start:start + n, None]
                tw = token_weights[start:start + n]
                low = torch.mm(h, w.T, out=low_buffer[:n])
                logits = logits_buffer[:n]
                if low is not logits:
                    logits.copy_(low)
                # log-sum-exp and softmax written out in place (max, exp, sum): fewer passes over the
                # chunk than logsumexp followed by a separate softmax.
                target_logit = logits.gather(1, target).squeeze(1)
                row_max = logits.amax(dim=-1, keepdim=True)
                sum_exp = logits.sub_(row_max).exp_().sum(dim=-1)
                lse = row_max.squeeze(1) + sum_exp.log()
                loss += ((lse - target_logit) * tw).sum()
                if grad_hidden is None and grad_weight is None:
                    continue
                grad_logits = logits.mul_((tw / sum_exp)[:, None])  # softmax x weight
                grad_logits.scatter_add_(1, target, -tw[:, None])  # minus one-hot x weight
                if grad_hidden is not None:
                    grad_low = low.copy_(grad_logits) if low is not logits else grad_logits
                    grad_hidden[start:start + n] = grad_low @ w
                if grad_weight is not None:
                    grad_weight.addmm_(grad_logits.T, h.float())
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def causal_lm_loss(hidden_states: torch.Tensor, lm_head_weight: torch.Tensor, input_ids: torch.Tensor,
                   token_weights: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Weighted next-token cross-entropy, summed (not averaged) over the batch.

    hidden_states [B, T, d] are the decoder's final (normed) states; token_weights[b, t] weighs the
    prediction of input_ids[b, t] from the tokens before it (0: no loss).
    """
    return next_token_loss(hidden_states[:, :-1], lm_head_weight, input_ids[:, 1:], token_weights[:, 1:], chunk_size)


def next_token_loss(hidden_states: torch.Tensor, lm_head_weight: torch.Tensor, target_ids: torch.Tensor,
                    target_weights: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """causal_lm_loss with the targets already shifted: position t predicts target_ids[:, t] (a sequence
    parallel slice, whose last position predicts the next slice's first token)."""
    keep = target_weights != 0
    chunk_size = chunk_size or default_chunk_size(lm_head_weight.shape[0])
    if not torch.is_grad_enabled():  # a custom Function is told its inputs need gradients even under no_grad
        lm_head_weight = lm_head_weight.detach()
    return _LabelSparseCrossEntropy.apply(hidden_states[keep], lm_head_weight, target_ids[keep],
                                          target_weights[keep].float(), chunk_size)


class CausalLMLoss(nn.Module):
    """The module that training runs (and DDP/FSDP wrap): decoder forward, then the label-sparse loss."""

    def __init__(self, model: nn.Module, chunk_size: int | None = None):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def causal_lm(self) -> nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids, attention_mask, token_weights, position_ids=None, target_ids=None,
                weightings=None) -> torch.Tensor:
        """With target_ids (a sequence-parallel slice): token_weights are the targets' weights, already shifted.
        With weightings [K, *token_weights.shape]: the K losses under token_weights times each of them (the
        held-out loss by position bucket) from one decoder forward."""
        lm = self.causal_lm()
        head = lm.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise NotImplementedError("an LM head with a bias is not supported by the label-sparse loss")
        hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state
        loss, targets = (causal_lm_loss, input_ids) if target_ids is None else (next_token_loss, target_ids)
        if weightings is not None:
            return torch.stack([loss(hidden, head.weight, targets, token_weights * w, self.chunk_size)
                                for w in weightings])
        return loss(hidden, head.weight, targets, token_weights, self.chunk_size)
