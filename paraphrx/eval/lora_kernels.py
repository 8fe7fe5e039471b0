"""The batched LoRA update in float32 on the GPU, each row multiplying only its own adapter (Triton).

`lora_batch.apply_lora` multiplies every row by every adapter's stacked A and B and masks the others out: with
five adapters that is five times the float32 multiply-adds a row needs, in cuBLAS's float32 GEMMs (CUDA cores, no
tensor cores), plus an [N, out] float32 update written and read again. Here, as in Punica's or vLLM's multi-LoRA
kernels, the rows are sorted by adapter once per forward and each tile of rows multiplies only the adapters its
rows use (one, at a boundary two); base rows multiply nothing. Two kernels per projection:

- `shrink`: u[n, k-th block] = scale(a) * (x[n] @ A_a,k^T), every module of a fused projection (q|k|v, gate|up);
- `expand`: y[n, module k's columns] += u[n, k-th block] @ B_a,k^T, added to the base output as PEFT's layer adds it
  (bitsandbytes 4-bit layers round the update to y's dtype first, plain layers add in fp32 and round the sum),
  written in place: no float32 update tensor.

The arithmetic is lora_batch's float32 formula (the scale applied before B): float32 products and sums
(`input_precision="ieee"`, no TF32), so values differ from cuBLAS's only in the order of the float32 sums. Each
adapter's rank is padded to one block of zeros (exact: zero products add nothing). CUDA only; elsewhere the
engine keeps lora_batch's torch path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from paraphrx.eval.lora_batch import PaddedLora

ROWS = 16  # rows per tile (tl.dot's minimum): after sorting, most tiles hold one adapter's rows
COLUMNS = 64  # output columns per expand tile
DEPTH = 64  # input features per shrink step


@dataclass
class RowOrder:
    """The rows of one forward sorted by adapter: `rows` [N] row indices, `adapters` [N] each one's adapter
    (-1: the base model) in that order."""

    rows: torch.Tensor
    adapters: torch.Tensor


def row_order(adapter_of_row: torch.Tensor) -> RowOrder:
    """Sort the rows of a forward by adapter (-1 for base rows): device work only, CUDA-graph capturable."""
    adapters, rows = torch.sort(adapter_of_row.to(torch.int32), stable=True)
    return RowOrder(rows.to(torch.int32), adapters)


@triton.jit
def _adapters_of_tile(adapters_ptr, start, n):
    """A tile's 16 (ROWS) sorted positions, their adapters, and the first and last adapter among them."""
    offs = start + tl.arange(0, 16)
    ads = tl.load(adapters_ptr + offs, mask=offs < n, other=-1)
    first = tl.min(tl.where(ads >= 0, ads, 1 << 30))
    return offs, ads, first, tl.max(ads)


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, scale_ptr, rows_ptr, adapters_ptr, u_ptr,
    n, in_features, stride_x, stride_a, stride_u,
    R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # program (row tile, module k): u[rows, k*R : (k+1)*R]
    offs, ads, first, last = _adapters_of_tile(adapters_ptr, tl.program_id(0) * 16, n)
    k = tl.program_id(1)
    rows = tl.load(rows_ptr + offs, mask=offs < n, other=0).to(tl.int64)
    cols = tl.arange(0, R)
    acc = tl.zeros((16, R), dtype=tl.float32)
    for a in range(first, last + 1):
        mine = ads == a
        part = tl.zeros((16, R), dtype=tl.float32)
        for start in range(0, in_features, BLOCK_K):
            depth = start + tl.arange(0, BLOCK_K)
            x = tl.load(
                x_ptr + rows[:, None] * stride_x + depth[None, :],
                mask=mine[:, None] & (depth[None, :] < in_features),
                other=0.0,
            ).to(tl.float32)
            w = tl.load(
                a_ptr + a * stride_a + (k * R + cols[None, :]).to(tl.int64) * in_features + depth[:, None],
                mask=depth[:, None] < in_features,
                other=0.0,
            )
            part += tl.dot(x, w, input_precision="ieee")
        acc += tl.where(mine[:, None], part * tl.load(scale_ptr + a), 0.0)
    tl.store(u_ptr + rows[:, None] * stride_u + k * R + cols[None, :], acc, mask=(offs < n)[:, None])


@triton.jit
def _expand_kernel(
    y_ptr, u_ptr, b_ptr, rows_ptr, adapters_ptr,
    n, out_features, y_col, u_col, stride_y, stride_u, stride_b,
    R: tl.constexpr, BLOCK_N: tl.constexpr, ROUND_BEFORE_ADD: tl.constexpr,
):  # fmt: skip
    # program (row tile, column tile): y[rows, y_col + cols] += u[rows, u_col : u_col + R] @ B^T, in place
    offs, ads, first, last = _adapters_of_tile(adapters_ptr, tl.program_id(0) * 16, n)
    rows = tl.load(rows_ptr + offs, mask=offs < n, other=0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ranks = tl.arange(0, R)
    acc = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    for a in range(first, last + 1):
        mine = ads == a
        u = tl.load(u_ptr + rows[:, None] * stride_u + u_col + ranks[None, :], mask=mine[:, None], other=0.0)
        w = tl.load(
            b_ptr + a * stride_b + cols[None, :].to(tl.int64) * R + ranks[:, None],
            mask=cols[None, :] < out_features,
            other=0.0,
        )
        acc += tl.dot(u, w, input_precision="ieee")  # rows of other adapters add exact zeros
    keep = ((ads >= 0) & (offs < n))[:, None] & (cols[None, :] < out_features)
    at = y_ptr + rows[:, None] * stride_y + y_col + cols[None, :]
    y = tl.load(at, mask=keep, other=0.0)
    # in float32 and rounded once, as torch adds two bf16 tensors (a native bf16 add could round differently)
    if ROUND_BEFORE_ADD:
        out = y.to(tl.float32) + acc.to(y.dtype).to(tl.float32)
    else:
        out = y.to(tl.float32) + acc
    tl.store(at, out.to(y.dtype), mask=keep)


def shrink(x: torch.Tensor, lora: PaddedLora, order: RowOrder) -> torch.Tensor:
    """u [N, k * R] float32: row n's block k is scale * (x[n] @ A[adapter(n), k]^T); zeros for base rows."""
    n, in_features = x.shape
    u = torch.empty(n, lora.a.shape[1], dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, ROWS), len(lora.b))
    _shrink_kernel[grid](
        x, lora.a, lora.scales, order.rows, order.adapters, u,
        n, in_features, x.stride(0), lora.a.stride(0), u.stride(0),
        R=lora.rank, BLOCK_K=DEPTH,
    )  # fmt: skip
    return u


def expand(y: torch.Tensor, u: torch.Tensor, lora: PaddedLora, order: RowOrder, round_before_add: bool) -> torch.Tensor:
    """y [N, sum of out_k] with each row's update added in place (module k's columns get u's block k @ B^T)."""
    n, col = y.shape[0], 0
    for k, b in enumerate(lora.b):
        grid = (triton.cdiv(n, ROWS), triton.cdiv(b.shape[1], COLUMNS))
        _expand_kernel[grid](
            y, u, b, order.rows, order.adapters,
            n, b.shape[1], col, k * lora.rank, y.stride(0), u.stride(0), b.stride(0),
            R=lora.rank, BLOCK_N=COLUMNS, ROUND_BEFORE_ADD=round_before_add,
        )  # fmt: skip
        col += b.shape[1]
    return y
