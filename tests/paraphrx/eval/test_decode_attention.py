"""Flex decode attention against Gemma-2's eager attention (float32): each row's own keys, the sliding window,
the soft-cap and GQA, on rows whose lengths end in different KV blocks."""

import pytest
import torch

from paraphrx.eval.decode_attention import BLOCK, flex_decode_attention

ROWS, KV_HEADS, GROUP, DIM, CAP, SCALING = 5, 2, 2, 16, 50.0, 0.25


def eager(q, keys, values, pos, lo):
    """Scores scaled, soft-capped, masked to lo < j <= pos, softmax in fp32: as the engine's padded path."""
    at = torch.arange(keys.shape[2])
    visible = (at[None, :] <= pos[:, None]) & (at[None, :] > lo[:, None])
    scores = torch.matmul(q.view(ROWS, KV_HEADS, GROUP, DIM), keys.transpose(-1, -2)) * SCALING
    scores = torch.tanh(scores / CAP) * CAP + torch.where(visible, 0.0, torch.finfo(q.dtype).min)[:, None, None]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32)
    return torch.matmul(weights, values).view(ROWS, KV_HEADS * GROUP, 1, DIM)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))],
)
@pytest.mark.parametrize("window", [None, 100], ids=["global", "sliding"])
def test_flex_decode_attention_equals_eager_attention(window, device):
    """On CUDA with the tuned kernel options (`CUDA_KERNEL_OPTIONS`): tiles of 32 keys inside 128-key blocks."""
    torch.manual_seed(0)
    length = 3 * BLOCK
    q = torch.randn(ROWS, KV_HEADS * GROUP, 1, DIM)
    keys, values = torch.randn(2, ROWS, KV_HEADS, length, DIM).unbind(0)
    pos = torch.tensor([0, BLOCK - 1, BLOCK, 2 * BLOCK + 7, length - 1])  # first key, block edges, the last one
    lo = torch.full_like(pos, -1) if window is None else pos - window
    expected = eager(q, keys, values, pos, lo)
    q, keys, values, pos, lo = (t.to(device) for t in (q, keys, values, pos, lo))
    ours = flex_decode_attention(SCALING, CAP, device)(q, keys, values, pos, lo)
    torch.testing.assert_close(ours.cpu(), expected, rtol=0, atol=1e-5)
