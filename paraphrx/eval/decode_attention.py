"""One decode step's attention that reads each row's own keys only: FlexAttention over the static KV cache.

In the engine's continuous batch the rows sit at every point of their answers, so the longest live row sets the KV
length that a plain batched matmul reads for all of them (about twice the keys the rows need, with the shipped
data's answer lengths). Here a BlockMask built on the device from each row's position lets torch's flex decoding
kernel read only the KV blocks up to that row's position (from the window's start on sliding layers); the mask inside
a block, Gemma-2's soft-cap and `query_pre_attn_scalar` are its mask_mod, score_mod and scale. All of it is tensor
work on the device (CUDA-graph capturable, no host read).

The sums are the same as eager attention's; the roundings are flex's: the scores stay in float32 until the softmax
(eager rounds them to the model dtype), so in bf16 the weights differ in the last bit and near-ties may break the
other way. Float32 gives eager's values to float32 rounding.

torch.compile with static shapes: one graph per (slots, cache length, dtype), which the engine compiles before a
run (`GemmaDecodeEngine.prepare`) for its few slot counts. Dynamic shapes fail: inductor's "unbacked_bindings" on
torch 2.13 (CPU) and 2.11 (CUDA), and an illegal memory access at the second width under automatic dynamic shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# KV positions per block of the mask; flex decoding's kernels tile keys by 128 or less.
BLOCK = 128
# The decoding kernel's tiles on CUDA. torch's default for sm_90 is 64 keys, one stage, two warps (in torch 2.13's
# heuristics the sm_90 entry, three stages, is overwritten by the branch after it): on the H200 (torch 2.11) 2.1 TB/s
# of useful KV reads at 512 rows of Gemma-2-2b (256-wide heads). 32 keys, three stages, four warps: 2.6 TB/s, 1.13x
# the steady decode rate (benchmarks/RESULTS.md).
CUDA_KERNEL_OPTIONS = {"BLOCK_N": 32, "num_stages": 3, "num_warps": 4}


def flex_decode_attention(scaling: float, cap: float | None, device) -> Callable:
    """attention(q [B, heads, 1, d], keys/values [B, kv_heads, S, d], pos [B], lo [B]) -> [B, heads, 1, d]: each row
    attends to keys lo < j <= pos (S a multiple of BLOCK). The constants are closure constants, compiled in; on a
    CUDA `device` the kernel uses `CUDA_KERNEL_OPTIONS`."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    kernel_options = dict(CUDA_KERNEL_OPTIONS) if torch.device(device).type == "cuda" else None

    def score_mod(score, b, h, q_idx, kv_idx):
        return score if cap is None else torch.tanh(score / cap) * cap

    def attention(q, keys, values, pos, lo):
        rows, blocks = q.shape[0], keys.shape[2] // BLOCK
        first = (lo + 1).clamp(min=0) // BLOCK
        count = (pos // BLOCK - first + 1).to(torch.int32).view(rows, 1, 1)
        steps = torch.arange(blocks, device=q.device, dtype=first.dtype)
        indices = (first.view(rows, 1, 1, 1) + steps).clamp(max=blocks - 1).to(torch.int32)

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= pos[b]) & (kv_idx > lo[b])

        mask = BlockMask.from_kv_blocks(
            count, indices, BLOCK_SIZE=BLOCK, mask_mod=mask_mod, seq_lengths=(1, keys.shape[2]), compute_q_blocks=False
        )
        return flex_attention(
            q,
            keys,
            values,
            score_mod=score_mod,
            block_mask=mask,
            scale=scaling,
            enable_gqa=True,
            kernel_options=kernel_options,
        )

    return torch.compile(attention, dynamic=False)
