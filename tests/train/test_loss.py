import pytest
import torch
import torch.nn.functional as F

from tenfold.train.loss import causal_lm_loss


def full_logits_loss(hidden, weight, input_ids, token_weights):
    logits = (hidden[:, :-1] @ weight.T).float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none")
    return (ce * token_weights[:, 1:].reshape(-1)).sum()


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_chunked_loss_and_grads_equal_full_logits_loss(chunk_size):
    torch.manual_seed(0)
    B, T, d, V = 2, 33, 16, 101
    hidden = torch.randn(B, T, d, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(V, d).requires_grad_()
    input_ids = torch.randint(0, V, (B, T))
    token_weights = torch.zeros(B, T)
    token_weights[0, 5:20] = 1.0      # an answer span
    token_weights[1, 1:] = 0.5        # context tokens at half weight
    token_weights[1, 25:30] = 1.0

    ref = full_logits_loss(hidden, weight, input_ids, token_weights)
    ref_gh, ref_gw = torch.autograd.grad(ref * 0.3, (hidden, weight))
    loss = causal_lm_loss(hidden, weight, input_ids, token_weights, chunk_size=chunk_size)
    gh, gw = torch.autograd.grad(loss * 0.3, (hidden, weight))

    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-5, atol=1e-5)


def test_frozen_head_gets_no_grad_and_hidden_grad_still_matches():
    torch.manual_seed(1)
    hidden = torch.randn(1, 12, 8).requires_grad_()
    weight = torch.randn(50, 8)  # frozen, like the LM head under LoRA
    input_ids = torch.randint(0, 50, (1, 12))
    token_weights = torch.ones(1, 12)
    loss = causal_lm_loss(hidden, weight, input_ids, token_weights, chunk_size=4)
    loss.backward()
    ref_hidden = hidden.detach().clone().requires_grad_()
    full_logits_loss(ref_hidden, weight, input_ids, token_weights).backward()
    torch.testing.assert_close(hidden.grad, ref_hidden.grad, rtol=1e-5, atol=1e-5)
    assert weight.grad is None


def test_long_sequence_with_large_vocab_never_builds_full_logits():
    """4K positions x 128K vocab would be 2 GB of fp32 logits; no single allocation here exceeds a chunk's."""
    torch.manual_seed(2)
    T, d, V = 4096, 8, 128_256
    hidden = torch.randn(1, T, d, requires_grad=True)
    weight = torch.randn(V, d) * 0.01
    input_ids = torch.randint(0, V, (1, T))
    token_weights = torch.ones(1, T)
    with torch.profiler.profile(profile_memory=True) as prof:
        loss = causal_lm_loss(hidden, weight, input_ids, token_weights, chunk_size=128)
        loss.backward()
    largest_allocation = max(e.cpu_memory_usage for e in prof.events())
    chunk_logits_bytes = 128 * V * 4
    assert chunk_logits_bytes <= largest_allocation <= 2 * chunk_logits_bytes, largest_allocation
    assert torch.isfinite(loss)


def test_under_bf16_autocast_the_head_runs_in_bf16_and_matches_autocast_reference():
    torch.manual_seed(3)
    hidden = torch.randn(1, 40, 16).requires_grad_()
    weight = torch.randn(64, 16)
    input_ids = torch.randint(0, 64, (1, 40))
    token_weights = torch.ones(1, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = causal_lm_loss(hidden, weight, input_ids, token_weights, chunk_size=8)
        ref = full_logits_loss(hidden, weight.to(torch.bfloat16), input_ids, token_weights)
    (g,) = torch.autograd.grad(loss, hidden)
    (ref_g,) = torch.autograd.grad(ref, hidden)
    assert loss.dtype == torch.float32 and g.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-3, atol=1e-3)
    torch.testing.assert_close(g, ref_g, rtol=2e-2, atol=2e-3)
    fp32 = causal_lm_loss(hidden, weight, input_ids, token_weights, chunk_size=8)
    assert fp32.item() != loss.item()  # the bf16 path really ran in bf16


def test_without_grad_mode_no_gradient_is_computed_even_for_a_trained_head():
    """A custom autograd Function is told its inputs need gradients under no_grad too: a held-out pass with a
    trained head (tied to the trained embedding) must not build the head's [vocab, width] fp32 gradient."""
    torch.manual_seed(4)
    V, d = 20_000, 256
    hidden = torch.randn(1, 16, d)
    weight = torch.randn(V, d, requires_grad=True)
    input_ids = torch.randint(0, V, (1, 16))
    with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
        loss = causal_lm_loss(hidden, weight, input_ids, torch.ones(1, 16), chunk_size=4)
    largest_allocation = max(e.cpu_memory_usage for e in prof.events())
    assert largest_allocation < V * d * 4 / 4, largest_allocation  # the gradient would be V * d * 4 bytes
    torch.testing.assert_close(loss, full_logits_loss(hidden, weight.detach(), input_ids, torch.ones(1, 16)))
