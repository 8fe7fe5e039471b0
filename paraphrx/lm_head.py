"""Per-token log-probabilities over the 256k vocabulary with their gradient formed in the same pass: two vocabulary
GEMMs per step instead of TRL's three.

TRL's `ChunkedLogProbFunction` never holds the [tokens, vocab] logits: its forward folds vocabulary tiles into
online-logsumexp statistics, and its backward computes every tile again to turn it into the gradient (logits,
logits again, gradient: three GEMMs of tokens x 2304 x 256,000). `LogProbsWithGradient` tiles by blocks of tokens
across the whole vocabulary instead, so a block's log-normaliser is complete while its logits are still in memory:
the tile becomes d log p / d logits at once and one more GEMM gives d log p / d hidden for each token, kept
([tokens, hidden] in fp32). The backward only scales those rows by the incoming per-token gradient. The per-element
math is TRL's own kernels (soft-capping, online statistics, gradient in place), reached through library_internals.
It serves frozen LM heads (Gemma-2's tied embedding under LoRA): a trained head needs TRL's weight gradient.
`log_probs_forward_only` is the same pass without the gradient, for evaluation: one GEMM per tile.
"""

from __future__ import annotations

import torch

from paraphrx import library_internals as internals

# Tokens per tile: [1024, 256000] bf16 logits are 0.5 GB, twice TRL's [4096, 32768] tile.
TOKEN_BLOCK = 1024
OUTPUTS = ("log_probs", "entropy", "is_top1")


def trl_log_probs(hidden, weight, bias, targets, softcap):
    """The same three outputs from TRL's own `ChunkedLogProbFunction` (which also differentiates the weight)."""
    from trl.kernels import ChunkedLogProbFunction

    log_probs, entropy, _, _, is_top1 = ChunkedLogProbFunction.apply(
        hidden, weight, bias, targets, 1.0, internals.TRL_LOGPROB_CHUNK_SIZE, softcap, 1.0, OUTPUTS
    )
    return log_probs, entropy, is_top1


def _tiled_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    softcap: float | None,
    token_block: int,
    grad_hidden: torch.Tensor | None = None,
):
    """(log_probs, entropy, is_top1) over token tiles that span the whole vocabulary. With `grad_hidden` ([tokens,
    hidden], fp32), each tile is also turned into d log p / d logits in place and folded into it (one more GEMM)."""
    device, (n_tokens, vocab) = hidden.device, (hidden.shape[0], weight.shape[0])
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
    weight = weight.to(dtype)
    kernel_args = {"logit_scale": 1.0, "softcap": softcap or 1.0, "inv_t": 1.0, "HAS_SOFTCAP": softcap is not None}

    def stat(fill: float) -> torch.Tensor:
        return torch.full((n_tokens,), fill, device=device, dtype=torch.float32)

    running_max, max_before_target = stat(float("-inf")), stat(float("-inf"))
    sum_exp, x_sum_exp, target_logit, unused = stat(0.0), stat(0.0), stat(0.0), stat(0.0)
    log_z = torch.empty_like(sum_exp)
    ones = stat(1.0) if grad_hidden is not None else None  # d(sum of log p) / d(log p): scaled in backward
    tiles = torch.empty((min(n_tokens, token_block), vocab), device=device, dtype=dtype)
    triton, block = internals.use_triton(device), internals.LOGPROB_BLOCK_SIZE
    for start in range(0, n_tokens, token_block):
        end = min(start + token_block, n_tokens)
        rows, tile = slice(start, end), tiles[: end - start]
        torch.mm(hidden[rows].to(dtype), weight.t(), out=tile)
        fold = internals.forward_kernel[(end - start,)] if triton else internals.forward_tile
        fold(
            tile,
            tile.stride(0),
            targets[rows],
            running_max[rows],
            sum_exp[rows],
            x_sum_exp[rows],
            unused[rows],
            unused[rows],
            max_before_target[rows],
            target_logit[rows],
            0,
            vocab,
            HAS_ENTROPY=True,
            HAS_LOG_SUM_SQ_PROBS=False,
            HAS_MEAN_LOGITS=False,
            HAS_IS_TOP1=True,
            BLOCK_SIZE=block,
            **kernel_args,
        )
        torch.add(running_max[rows], torch.log(sum_exp[rows]), out=log_z[rows])
        if grad_hidden is None:
            continue
        # the whole vocabulary of these tokens is in the tile: turn it into d log p / d logits in place
        fold = internals.backward_kernel[(end - start, -(-vocab // block))] if triton else internals.backward_tile
        fold(
            tile,
            tile.stride(0),
            targets[rows],
            log_z[rows],
            log_z[rows],
            ones[rows],
            ones[rows],
            0,
            vocab,
            HAS_LOGPROB_GRAD=True,
            HAS_ENTROPY_GRAD=False,
            BLOCK_SIZE=block,
            **kernel_args,
        )
        internals.addmm_fp32(grad_hidden[rows], tile, weight)

    log_probs = target_logit - log_z
    entropy = log_z - x_sum_exp / sum_exp
    is_top1 = (target_logit >= running_max) & (target_logit > max_before_target)
    return log_probs, entropy, is_top1


def log_probs_forward_only(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    softcap: float | None,
    token_block: int = TOKEN_BLOCK,
):
    """The same (log_probs, entropy, is_top1) as `LogProbsWithGradient`, for evaluation: one vocabulary GEMM per tile
    and no gradient kept; the [tokens, vocabulary] logits never exist beyond one tile."""
    with torch.no_grad():
        return _tiled_log_probs(hidden, weight, targets, softcap, token_block)


class LogProbsWithGradient(torch.autograd.Function):
    """(log_probs, entropy, is_top1) of `hidden @ weight.T` at `targets`, with optional final soft-capping.

    Differentiable in `hidden` through `log_probs` only (entropy and accuracy are metrics)."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        softcap: float | None,
        token_block: int = TOKEN_BLOCK,
    ):
        ctx.set_materialize_grads(False)
        grad_hidden = torch.zeros((hidden.shape[0], hidden.shape[1]), device=hidden.device, dtype=torch.float32)
        log_probs, entropy, is_top1 = _tiled_log_probs(hidden, weight, targets, softcap, token_block, grad_hidden)
        ctx.save_for_backward(grad_hidden)
        ctx.hidden_dtype = hidden.dtype
        ctx.mark_non_differentiable(entropy, is_top1)
        return log_probs, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_log_probs, *_):
        (grad_hidden,) = ctx.saved_tensors
        if grad_log_probs is None:
            return None, None, None, None, None
        return (grad_log_probs.float().unsqueeze(1) * grad_hidden).to(ctx.hidden_dtype), None, None, None, None
