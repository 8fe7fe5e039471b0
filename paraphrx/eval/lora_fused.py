"""The float32 LoRA update's pick, expand and add as one Triton kernel per module, on CUDA (see `lora_batch`).

`lora_batch.apply_lora` computes the update in three steps with a pass over memory each: the groups' rows of the
shrink (`pick_rows`), a batched matmul that writes a float32 [g*C, out] update, and a gather-add into the base
output. The expand and the add move ~6 bytes per output element for the 2 the result needs; on the H200 they took
2.7 of a decode step's 15.4 ms. Here one program takes C_b places of a group and O_b columns of one module: it sums
its rows' shrink parts, scales them, multiplies by the group's adapter's B tile (one read shared by the group's rows:
the reason for the groups) and adds the result into its rows of the base output in place, with the roundings of
`add_update`. The float32 products are the same; only the order of the r-term sums may differ from cuBLAS's (a
float32 rounding).

CUDA only (Triton); the CPU, and updates in the model dtype (`exact_lora=False`), keep the three steps.
"""

from __future__ import annotations

import functools

import torch

# Places and output columns per program: rows of 256 bytes of a bf16 output, and a 16 x r float32 tile per dot.
BLOCK_PLACES = 16
BLOCK_COLUMNS = 128


def available(device) -> bool:
    """Whether `device` is a CUDA device here and Triton imports."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["capacity", "n_adapters"])
    def expand_add_kernel(
        y_ptr,
        y_stride,
        col0,
        out_width,
        u_ptr,
        u_stride,
        part_stride,
        adapter_stride,
        k_offset,
        scaling_ptr,
        b_ptr,
        b_adapter_stride,
        b_rank_stride,
        pick_ptr,
        back_ptr,
        n_adapters,
        capacity,
        rank,
        PARTS: tl.constexpr,
        R: tl.constexpr,
        ROUND_FIRST: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_O: tl.constexpr,
    ):
        group = tl.program_id(0)
        places = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cols = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
        in_group = places < capacity
        at = group * capacity + places
        code = tl.load(pick_ptr + at, mask=in_group, other=0)  # row * n + adapter
        row = code // n_adapters
        adapter = tl.load(pick_ptr + group * capacity) % n_adapters  # every place of a group has its adapter
        # a place owns its row only if the row's `back` points at it (unused places repeat another row)
        own = in_group & (tl.load(back_ptr + row, mask=in_group, other=-1) == at)
        ks = tl.arange(0, R)
        in_rank = ks < rank
        shrink = u_ptr + row[:, None] * u_stride + adapter * adapter_stride + k_offset + ks[None, :]
        loaded = own[:, None] & in_rank[None, :]
        g = tl.load(shrink, mask=loaded, other=0.0)
        for part in tl.static_range(1, PARTS):  # hi + mid + lo, in pick_rows' order
            g = g + tl.load(shrink + part * part_stride, mask=loaded, other=0.0)
        g = g * tl.load(scaling_ptr + adapter)
        in_cols = cols < out_width
        b = tl.load(
            b_ptr + adapter * b_adapter_stride + ks[:, None] * b_rank_stride + cols[None, :],
            mask=in_rank[:, None] & in_cols[None, :],
            other=0.0,
        )
        update = tl.dot(g, b, input_precision="ieee")
        out = y_ptr + row[:, None] * y_stride + col0 + cols[None, :]
        stored = own[:, None] & in_cols[None, :]
        y = tl.load(out, mask=stored, other=0.0)
        if ROUND_FIRST:  # PEFT's bitsandbytes layer: the update rounded to the output dtype, then added
            total = y.to(tl.float32) + update.to(y.dtype).to(tl.float32)
        else:
            total = y.to(tl.float32) + update
        tl.store(out, total.to(y.dtype), mask=stored)

    return triton, expand_add_kernel


def expand_add(
    y: torch.Tensor,
    u: torch.Tensor,
    b: tuple[torch.Tensor, ...],
    scaling: torch.Tensor,
    pick: torch.Tensor,
    back: torch.Tensor,
    parts: int,
    round_before_add: bool,
) -> torch.Tensor:
    """y [N, sum of the modules' outputs] (contiguous, updated in place and returned) plus each row's update, from
    the shrink u [N, parts * n * k * r] (float32), the modules' B^T `b` (each [n, r, out_j], float32), `scaling`
    [n, 1, 1] and the groups `pick` [g, C] / `back` [N] (`lora_batch.LoraGroups`)."""
    triton, kernel = _kernel()
    n_adapters, rank = b[0].shape[0], b[0].shape[1]
    kr = len(b) * rank
    groups, capacity = pick.shape
    if groups == 0:
        return y
    col = 0
    for m, module_b in enumerate(b):
        width = module_b.shape[2]
        grid = (groups, triton.cdiv(capacity, BLOCK_PLACES), triton.cdiv(width, BLOCK_COLUMNS))
        kernel[grid](
            y,
            y.stride(0),
            col,
            width,
            u,
            u.stride(0),
            n_adapters * kr,
            kr,
            m * rank,
            scaling,
            module_b,
            module_b.stride(0),
            module_b.stride(1),
            pick,
            back,
            n_adapters,
            capacity,
            rank,
            PARTS=parts,
            R=max(16, triton.next_power_of_2(rank)),
            ROUND_FIRST=round_before_add,
            BLOCK_C=BLOCK_PLACES,
            BLOCK_O=BLOCK_COLUMNS,
        )
        col += width
    return y
