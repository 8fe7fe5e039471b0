"""TRL's training loss and metrics (entropy, token accuracy, tokens seen) with nothing read on the host per step.

TRL 1.16's `SFTTrainer.compute_loss` turns five per-step scalars into Python numbers (`.item()`, `if num_valid > 0`),
and each one makes the host wait for the GPU to finish the forward before it may queue the backward.
`keep_loss_metrics_on_device` gives a trainer a `compute_loss` that appends the same quantities as tensors and a
`log` that reads them once per log step; any case it does not cover goes to TRL's own. With the collator's trained
positions in the batch (completion_positions.py) the LM head needs no boolean index either: four more waits gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from paraphrx import library_internals as internals
from paraphrx.completion_positions import POSITIONS, TARGETS
from paraphrx.patches import patch_attribute


@contextmanager
def keep_loss_metrics_on_device(trainer) -> Iterator[None]:
    """The trainer's `compute_loss` and `log` replaced (on this instance, until the context ends)."""
    trl_compute_loss, trl_log = trainer.compute_loss, trainer.log

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        positions = {key: inputs.pop(key) for key in (POSITIONS, TARGETS) if key in inputs}  # LabelPositionsCollator
        plain = (
            model.training
            and not return_outputs
            and trainer.compute_loss_func is None
            and trainer.label_smoother is None
            and not trainer.aux_loss_enabled
            and trainer.args.loss_type == "nll"
            and "position_ids" in inputs
            and "attention_mask" not in inputs
        )
        if not plain:
            return trl_compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return _loss_on_device(trainer, model, inputs, positions, num_items_in_batch)

    def log(logs: dict[str, float], start_time: float | None = None) -> None:
        _read_metrics(trainer)
        trl_log(logs, start_time)

    with ExitStack() as undo:
        undo.enter_context(patch_attribute(trainer, "compute_loss", compute_loss))
        undo.enter_context(patch_attribute(trainer, "log", log))
        yield


def _loss_on_device(trainer, model, inputs, positions, num_items_in_batch):
    inputs["use_cache"] = False
    if positions:  # the trained positions come from the host: no boolean index
        outputs = model(**inputs, **positions, fused_lm_head=True)
        label_count = torch.full((), positions[POSITIONS].numel(), device=outputs.log_probs.device)
    else:
        outputs = model(**inputs, fused_lm_head=True)
        label_count = outputs.label_mask.sum()
    num_tokens = label_count if num_items_in_batch is None else num_items_in_batch
    loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * (trainer.accelerator.num_processes // trainer.get_tp_size())
    gather = trainer.accelerator.gather_for_metrics
    # Both sums are zero on ignored positions, so a batch with no trained token gives 0 / 1 = 0, as TRL logs it.
    valid = gather(label_count).sum().clamp(min=1)
    metrics = internals.step_metrics(trainer)["train"]
    metrics["entropy"].append(gather(outputs.entropy.detach().sum()).sum() / valid)
    metrics["mean_token_accuracy"].append(gather(outputs.is_top1.sum()).sum() / valid)
    # padding-free: every position but the pad_to_multiple_of tail is a real token; gathered because ranks' batches
    # differ in length. Counted on the device: a host number would be a blocking copy.
    local = (inputs["input_ids"] != trainer.data_collator.pad_token_id).sum()
    tokens = internals.train_tokens(trainer) + gather(local).sum() // internals.tensor_parallel_size(trainer)
    internals.set_train_tokens(trainer, tokens)
    metrics["num_tokens"] = [tokens]
    return loss


def _read_metrics(trainer) -> None:
    """The metrics `compute_loss` kept as tensors, read in one go (one wait per log step, not five per step)."""
    for mode_metrics in internals.step_metrics(trainer).values():
        for key, values in mode_metrics.items():
            if values and all(isinstance(v, torch.Tensor) for v in values):
                mode_metrics[key] = torch.stack([v.double() for v in values]).tolist()
    if isinstance(internals.train_tokens(trainer), torch.Tensor):
        internals.set_train_tokens(trainer, int(internals.train_tokens(trainer)))
