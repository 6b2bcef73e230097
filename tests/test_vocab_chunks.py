"""The chunked vocabulary pass (grpo.objectives.loss.chunked_logprobs_and_entropy) equals the one-piece pass in
values and gradients, and its largest tensor is set by the chunk, not by the number of tokens."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from grpo.objectives.loss import chunked_logprobs_and_entropy, logprobs_and_entropy

V, H = 97, 16


def case(K: int, N: int = 5, T: int = 9, seed: int = 0):
    """K predicting positions, N x T targets; several targets share a position (a shared prompt's last one)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(K, H, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=torch.float64).requires_grad_()
    source = torch.randint(0, K, (N, T), generator=g)
    source[:, 0] = 0  # every sequence's first token predicted by the same position
    targets = torch.randint(0, V, (N, T), generator=g)
    return hidden, weight, source, targets


def run(fn, hidden, weight, source, targets, entropy_grad: bool):
    logp, entropy = fn(hidden, weight, source, targets)
    loss = (logp * torch.linspace(-1, 1, logp.numel(), dtype=logp.dtype).view_as(logp)).sum()
    if entropy_grad:
        loss = loss + 0.3 * entropy.sum()
    grads = torch.autograd.grad(loss, (hidden, weight))
    return logp.detach(), entropy.detach(), grads


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_chunks_equal_the_one_piece_pass(chunk, entropy_grad):
    hidden, weight, source, targets = case(K=23)
    whole = run(lambda h, w, s, t: logprobs_and_entropy(h @ w.T, s, t, 0.7, True, entropy_grad),
                hidden, weight, source, targets, entropy_grad)
    chunked = run(lambda h, w, s, t: chunked_logprobs_and_entropy(h, w, s, t, 0.7, chunk, True, entropy_grad),
                  hidden, weight, source, targets, entropy_grad)
    # Both passes compute in float32 (logits.float()), so they agree to float32 rounding: rtol 1e-5.
    for want, got in zip((whole[0], whole[1], *whole[2]), (chunked[0], chunked[1], *chunked[2])):
        assert torch.allclose(want, got, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_float32_chunks_match_to_rtol_1e5_and_without_entropy():
    hidden, weight, source, targets = (t.detach().float().requires_grad_() if t.is_floating_point() else t
                                       for t in case(K=40, seed=1))
    want, _ = logprobs_and_entropy(hidden @ weight.T, source, targets, 1.0, False)
    got, none = chunked_logprobs_and_entropy(hidden, weight, source, targets, 1.0, 6, False)
    assert none is None
    assert torch.allclose(want, got, rtol=1e-5, atol=1e-6)
    g_want = torch.autograd.grad(want.sum(), (hidden, weight))
    g_got = torch.autograd.grad(got.sum(), (hidden, weight))
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(g_want, g_got))


def test_no_grad_chunks_run_without_a_graph():
    hidden, weight, source, targets = case(K=30)
    with torch.no_grad():
        logp, entropy = chunked_logprobs_and_entropy(hidden, weight, source, targets, 1.0, 8, True)
    assert not logp.requires_grad and entropy.shape == source.shape


class LargestTensor(TorchDispatchMode):
    """The largest vocabulary-wide tensor ([.., V]) any operation produced, forward and backward (the hidden states
    and their gradient, [K, H], exist whatever the head does)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == V:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("chunked", [True, False])
def test_the_largest_tensor_is_set_by_the_chunk_not_the_tokens(chunked):
    chunk = 16
    largest = {}
    for K in (64, 512):
        hidden, weight, source, targets = case(K=K, N=4, T=8)
        with LargestTensor() as mode:
            if chunked:
                fn = lambda: chunked_logprobs_and_entropy(hidden, weight, source, targets, 1.0, chunk, True)  # noqa: E731
            else:
                fn = lambda: logprobs_and_entropy(hidden @ weight.T, source, targets, 1.0, True)  # noqa: E731
            logp, entropy = fn()
            (logp.sum() + entropy.sum()).backward()
        largest[K] = mode.largest
    if chunked:  # flat: [chunk, V] logits are the largest thing, whatever K is
        assert largest[64] == largest[512] == chunk * V
    else:  # the one-piece pass grows with the tokens (this is what the chunks fix)
        assert largest[512] == 512 * V > largest[64]
