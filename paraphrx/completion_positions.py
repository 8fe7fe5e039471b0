"""The trained positions of each batch, found on the host by the collator, so the LM head never asks the GPU.

TRL's fused LM head (`add_fused_lm_head`) scores only the positions whose label is not -100, and finds them with a
boolean index (`hidden_states[mask]`, `labels[mask]`): the GPU must report how many there are before the host may
queue the next kernel, twice in the forward and twice more in the backward. The collator has the same labels on the
CPU before they travel, so `LabelPositionsCollator` adds their positions (and the target ids) to the batch, and
`position_lm_head` scores exactly those rows with TRL's kernels (through `lm_head.LogProbsWithGradient`, which
also saves TRL's recomputation of the logits in the backward): the same numbers, with no host wait. On the fast path
`score_collated_positions` sets both up on a trainer, and the device-side `compute_loss` (device_loss.py) passes the
positions to the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from paraphrx import library_internals as internals
from paraphrx.patches import patch_attribute

POSITIONS, TARGETS = "label_positions", "label_targets"


class LabelPositionsCollator:
    """Wraps a collator: adds the flat positions of the next-token labels that train, and their token ids.

    Positions index the shifted sequence (`hidden_states[:, :-1]` flattened), as the fused LM head scores them."""

    def __init__(self, collator):
        self.collator = collator

    def __getattr__(self, name):  # pad_token_id, padding_free, ... as the wrapped collator has them
        if name == "collator":  # not set yet (unpickling in a spawned dataloader worker)
            raise AttributeError(name)
        return getattr(self.collator, name)

    def __call__(self, examples):
        batch = self.collator(examples)
        if "labels" in batch:
            labels = batch["labels"][:, 1:].reshape(-1)
            positions = (labels != -100).nonzero().squeeze(1)
            batch[POSITIONS], batch[TARGETS] = positions, labels[positions]
        return batch


def _plain_scale(config) -> bool:
    """Whether the logits are only soft-capped (Gemma-2), not scaled: the case `position_lm_head` implements.
    Other models keep TRL's own head (see `add_fused_lm_head` for the scalings it reads)."""
    text = config.get_text_config()
    return all(
        getattr(text, name, None) is None
        for name in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    )


@contextmanager
def position_lm_head(model) -> Iterator[bool]:
    """Let the TRL-patched forward of `model` (the base model under PEFT) score given positions, until the context
    ends; yields whether it did.

    Called with `fused_lm_head=True, label_positions=..., label_targets=...`, it returns the compact per-position
    `log_probs`, `entropy` and `is_top1` (one entry per trained token, in order), forward-only under `no_grad`
    (evaluation); every other call goes to TRL's forward unchanged. Yields False (and changes nothing) for a model
    whose logits TRL scales."""
    from paraphrx import lm_head

    if not _plain_scale(model.config):
        yield False
        return
    trl_forward = model.forward
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    def forward(*args, fused_lm_head=False, label_positions=None, label_targets=None, **kwargs):
        if not fused_lm_head or label_positions is None:
            return trl_forward(*args, fused_lm_head=fused_lm_head, **kwargs)
        kwargs["use_cache"] = False
        hidden = model.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        head = model.get_output_embeddings()
        hidden = hidden.reshape(-1, hidden.size(-1)).index_select(0, label_positions.to(hidden.device))
        hidden, targets = hidden.to(head.weight.device), label_targets.to(head.weight.device)
        if head.weight.requires_grad or head.bias is not None:  # a trained head: TRL's kernel has its gradient
            log_probs, entropy, is_top1 = lm_head.trl_log_probs(hidden, head.weight, head.bias, targets, softcap)
        elif not torch.is_grad_enabled():  # evaluation: no gradient GEMM
            log_probs, entropy, is_top1 = lm_head.log_probs_forward_only(hidden, head.weight, targets, softcap)
        else:
            log_probs, entropy, is_top1 = lm_head.LogProbsWithGradient.apply(hidden, head.weight, targets, softcap)
        return internals.FusedCausalLMOutput(loss=None, log_probs=log_probs, entropy=entropy, is_top1=is_top1)

    with patch_attribute(model, "forward", forward):
        yield True


@contextmanager
def score_collated_positions(trainer) -> Iterator[bool]:
    """The trainer's collator adds the trained positions to each batch, and its model's LM head scores exactly those
    (until the context ends); yields False, changing nothing, for a model whose logits TRL scales."""
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    with ExitStack() as undo:
        if undo.enter_context(position_lm_head(base)):
            undo.enter_context(patch_attribute(trainer, "data_collator", LabelPositionsCollator(trainer.data_collator)))
            yield True
        else:
            yield False
