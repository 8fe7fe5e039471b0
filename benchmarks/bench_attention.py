"""Flex attention forward + backward at gemma-2-2b's shapes: the default kernel blocks vs tuned ones, side by side.

The packed training batch of the fast path is one row of ~4k tokens holding 16 documents (Alpaca-like lengths), 8
query heads sharing 4 key/value heads of dimension 256, Gemma-2's soft-capping (50) in `score_mod` and a
causal + same-document block mask, as transformers builds it. At head_dim 256 the backward kernel is the single
largest non-matmul cost of a training step, so its Triton block sizes matter; this script times each candidate in
one process and prints the ratio to torch's default choice. Two runs minutes apart have ranked the candidates
differently (benchmarks/RESULTS.md): repeat a run before trusting a ranking. `--autotune` also lets inductor's
max-autotune search its own list and print the ranking it measured (slow: it did not finish in 140 s here).

    python benchmarks/bench_attention.py                 # on a GPU
    python benchmarks/bench_attention.py --autotune      # also inductor's own search
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: import train_sft and benchmarks.* as the tests do

from benchmarks.bench_train import EXAMPLES_PER_STEP, synthetic_examples  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, SOFTCAP = 8, 4, 256, 50.0

# (name, kernel_options): fwd_* keys reach the forward kernel, bwd_* the backward (torch's flex lowering strips the
# prefix). BLOCK_N1 % BLOCK_M1 == 0 and BLOCK_M2 % BLOCK_N2 == 0 are the backward kernel's constraints; larger
# blocks (e.g. bwd 64/128 with 8 warps) run out of shared memory at head_dim 256.
CANDIDATES = [
    ("default", None),
    ("fwd 64/64 w4 s2", dict(fwd_BLOCK_M=64, fwd_BLOCK_N=64, fwd_num_warps=4, fwd_num_stages=2)),
    (
        "bwd 64/64 w8 s2",
        dict(bwd_BLOCK_M1=64, bwd_BLOCK_N1=64, bwd_BLOCK_M2=64, bwd_BLOCK_N2=64, bwd_num_warps=8, bwd_num_stages=2),
    ),
    (
        "bwd 32/32 w4 s2",
        dict(bwd_BLOCK_M1=32, bwd_BLOCK_N1=32, bwd_BLOCK_M2=32, bwd_BLOCK_N2=32, bwd_num_warps=4, bwd_num_stages=2),
    ),
    (
        "fwd 64/64 + bwd 32/32",
        dict(
            fwd_BLOCK_M=64,
            fwd_BLOCK_N=64,
            fwd_num_warps=4,
            fwd_num_stages=2,
            bwd_BLOCK_M1=32,
            bwd_BLOCK_N1=32,
            bwd_BLOCK_M2=32,
            bwd_BLOCK_N2=32,
            bwd_num_warps=4,
            bwd_num_stages=3,
        ),
    ),
    (
        "bwd 32/32 w4 s3",
        dict(bwd_BLOCK_M1=32, bwd_BLOCK_N1=32, bwd_BLOCK_M2=32, bwd_BLOCK_N2=32, bwd_num_warps=4, bwd_num_stages=3),
    ),
]


def packed_document_ids(length: int | None = None, seed: int = 0) -> torch.Tensor:
    """Document id of every position of one packed batch of 16 synthetic examples, cut or padded to `length` (None:
    their own total); each pad position is its own document, as TRL's `pad_to_multiple_of` tail is (position id 0)."""
    lengths = [len(r["input_ids"]) for r in synthetic_examples(EXAMPLES_PER_STEP, vocab=1000, seed=seed)]
    length = sum(lengths) if length is None else length
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[:length]
    return torch.cat([ids, torch.arange(len(lengths), len(lengths) + length - ids.numel())])


def time_ms(step, iters: int) -> float:
    """Mean GPU milliseconds of `step`, queued back to back (no host wait between calls), after one warm-up call."""
    step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main() -> None:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--length",
        type=int,
        default=None,
        help="packed tokens (default: the 16 examples' own total, 3,755; the third session used 4352)",
    )
    parser.add_argument("--iters", type=int, default=200, help="calls per timing (short windows are noisy)")
    parser.add_argument("--autotune", action="store_true", help="also time inductor's max-autotune choice")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    doc = packed_document_ids(args.length).cuda()
    length = doc.numel()

    def causal_same_document(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc[q_idx] == doc[kv_idx])

    def softcap(score, b, h, q_idx, kv_idx):
        return SOFTCAP * torch.tanh(score / SOFTCAP)

    block_mask = create_block_mask(causal_same_document, 1, None, length, length, device="cuda")
    q = torch.randn(1, HEADS, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, KV_HEADS, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, KV_HEADS, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(1, HEADS, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    print(
        f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; length {length}, {EXAMPLES_PER_STEP} "
        f"documents + {int((doc >= EXAMPLES_PER_STEP).sum())} pad positions, block mask sparsity "
        f"{block_mask.sparsity():.1f}%",
        flush=True,
    )

    candidates = list(CANDIDATES) + ([("max-autotune", "autotune")] if args.autotune else [])
    results = []
    for name, options in candidates:
        torch._dynamo.reset()
        if options == "autotune":
            torch._inductor.config.max_autotune = True
            options = None
        compiled = torch.compile(flex_attention, dynamic=False)

        def attention(q, k, v, options=options, compiled=compiled):
            return compiled(
                q,
                k,
                v,
                score_mod=softcap,
                block_mask=block_mask,
                enable_gqa=True,
                scale=HEAD_DIM**-0.5,
                kernel_options=options,
            )

        try:
            fwd = time_ms(lambda: attention(q, k, v), args.iters)
            total = time_ms(lambda: attention(q, k, v).backward(grad), args.iters)
        except Exception as error:  # a block size the kernel cannot take (shared memory): report it, go on
            print(f"{name:<22} failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}", flush=True)
            continue
        results.append(
            {"name": name, "kernel_options": options, "fwd_ms": fwd, "bwd_ms": total - fwd, "total_ms": total}
        )
        print(f"{name:<22} fwd {fwd:7.3f} ms  bwd {total - fwd:7.3f} ms  total {total:7.3f} ms", flush=True)

    base = next((r for r in results if r["name"] == "default"), None)
    if base:
        print("\nspeed-up over the default (default ms / candidate ms; above 1 is faster):")
        for r in results:
            print(
                f"  {r['name']:<22} fwd {base['fwd_ms'] / r['fwd_ms']:.2f}x  bwd {base['bwd_ms'] / r['bwd_ms']:.2f}x  "
                f"total {base['total_ms'] / r['total_ms']:.2f}x"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"device": torch.cuda.get_device_name(), "length": length, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
