"""LogProbsWithGradient computes TRL's ChunkedLogProbFunction (values and hidden-state gradient), in one pass."""

import pytest
import torch
from trl.kernels import ChunkedLogProbFunction

from paraphrx.lm_head import LogProbsWithGradient, log_probs_forward_only


def _inputs(n=11, hidden=16, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g) * 2
    w = torch.randn(vocab, hidden, generator=g)
    targets = torch.randint(0, vocab, (n,), generator=g)
    return h, w, targets


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="TRL's Triton kernels run on CUDA")
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("softcap", [30.0, None])
@pytest.mark.parametrize("token_block", [4, 1024])  # several token tiles (one partial), and one
def test_matches_trls_chunked_head_values_and_gradient(softcap, token_block, device):
    h, w, targets = (t.to(device) for t in _inputs(vocab=3000 if device == "cuda" else 300))
    targets[0] = int((h[0] @ w.T).argmax())  # one certain top-1 hit, so the accuracy check can fail
    upstream = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(1)).to(device)  # per-row scaling

    h_trl = h.clone().requires_grad_()
    log_p, entropy, _, _, top1 = ChunkedLogProbFunction.apply(
        h_trl, w, None, targets, 1.0, 64, softcap, 1.0, ("log_probs", "entropy", "is_top1")
    )
    (log_p * upstream).sum().backward()

    h_ours = h.clone().requires_grad_()
    ours = LogProbsWithGradient.apply(h_ours, w, targets, softcap, token_block)
    (ours[0] * upstream).sum().backward()

    torch.testing.assert_close(ours[0], log_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], entropy, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[2], top1) and ours[2][0]
    torch.testing.assert_close(h_ours.grad, h_trl.grad, rtol=1e-4, atol=1e-6)
    # and both are the plain log-softmax of the (soft-capped) logits
    logits = h @ w.T
    logits = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    torch.testing.assert_close(ours[0], logits.log_softmax(-1).gather(1, targets[:, None])[:, 0], rtol=1e-5, atol=1e-5)
    assert not ours[1].requires_grad and not ours[2].requires_grad  # metrics


def test_bf16_autocast_computes_in_bf16_and_returns_the_inputs_dtype():
    h, w, targets = _inputs()
    h = h.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_p, _, _ = LogProbsWithGradient.apply(h, w, targets, 30.0)
    log_p.sum().backward()
    assert log_p.dtype == torch.float32 and h.grad.dtype == torch.float32
    exact = (30.0 * torch.tanh(h.detach() @ w.T / 30.0)).log_softmax(-1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(log_p, exact, rtol=0.05, atol=0.3)  # bf16 logits
    assert not torch.allclose(log_p, exact, rtol=1e-5, atol=1e-5)  # it did round to bf16


def test_no_tokens_gives_empty_outputs_and_a_zero_gradient():
    h, w, _ = _inputs()
    h = h[:0].clone().requires_grad_()
    log_p, entropy, top1 = LogProbsWithGradient.apply(h, w, torch.zeros(0, dtype=torch.long), 30.0)
    assert log_p.shape == entropy.shape == top1.shape == (0,)
    log_p.sum().backward()
    assert h.grad.shape == (0, 16)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_only_gives_the_same_values_without_a_gradient(device):
    h, w, targets = (t.to(device) for t in _inputs(n=13, vocab=3000 if device == "cuda" else 300))
    with_gradient = LogProbsWithGradient.apply(h.clone().requires_grad_(), w, targets, 30.0, 4)
    forward_only = log_probs_forward_only(h.clone().requires_grad_(), w, targets, 30.0, 4)
    for ours, reference in zip(forward_only, with_gradient):
        assert torch.equal(ours, reference.detach())  # the same tiles and kernels, bit for bit
        assert not ours.requires_grad and ours.grad_fn is None  # nothing kept for a backward
