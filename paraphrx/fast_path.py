"""The GPU fast path for QLoRA SFT of Gemma-2: the reference recipe's model, loss and examples per optimizer step,
computed faster. docs/speed.md explains each change; benchmarks/RESULTS.md has what each one buys.

The fast path is `CHANGES`: one list of named changes, applied in its order by `trainer_factory.build_trainer`
when the recipe's `fast_path` resolves to on (config.fast_path_enabled decides that once). A change may set training
arguments before SFTTrainer reads them (`to_args`) and change the built trainer, its model or the process
(`to_trainer`, which also sees the arguments as the recipe gave them). Each is a context manager entered on the
run's `ExitStack` (made of `patch_attribute` and the like), so closing the stack when the run ends (train_sft.main)
puts back each argument, method, forward, transformers function and torch setting it changed.

How the model is loaded for the fast path (flex attention, the frozen NF4 base dequantized once) is part of loading
(modeling.load_base_model), not a change to undo. The CPU path is the plain one: eager attention, bitsandbytes NF4,
no compile (flex attention has no backward on the CPU).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass

import torch
from loguru import logger
from torch import nn

from paraphrx import library_internals as internals
from paraphrx.completion_positions import score_collated_positions
from paraphrx.device_loss import keep_loss_metrics_on_device
from paraphrx.module_walks import list_module_walks_once
from paraphrx.patches import patch_attribute, patch_attributes


@dataclass(frozen=True)
class Change:
    """One named change of the fast path: `to_args(args)` before SFTTrainer is built from the arguments,
    `to_trainer(trainer, recipe_args)` after (`recipe_args`: the arguments as the recipe set them). Each returns a
    context manager: entered, it makes the change; exited, it undoes it."""

    name: str
    to_args: Callable[..., AbstractContextManager] | None = None
    to_trainer: Callable[..., AbstractContextManager] | None = None


# --- the changes, in the order CHANGES lists them ------------------------------------------------------------------
def _one_padding_free_batch(args) -> AbstractContextManager:
    """The step's examples (micro-batch x accumulation) as one padding-free batch: the same examples per optimizer
    step, no pad tokens; flex attention keeps the samples apart. TRL refuses `max_length` with padding-free batches,
    so the rows are cut before batching instead (`_cut_rows`)."""
    examples = args.per_device_train_batch_size * args.gradient_accumulation_steps
    return patch_attributes(args, per_device_train_batch_size=examples, gradient_accumulation_steps=1,
                            padding_free=True, max_length=None)


@contextmanager
def _cut_rows(trainer, recipe_args) -> Iterator[None]:
    max_length = recipe_args.max_length
    with patch_attributes(trainer, train_dataset=truncate_tokenized(trainer.train_dataset, max_length),
                          eval_dataset=truncate_tokenized(trainer.eval_dataset, max_length)):
        logger.info("fast path: one padding-free batch of {} examples per optimizer step, sequences cut at {} tokens",
                    trainer.args.per_device_train_batch_size, max_length)
        yield


def _no_activation_checkpointing(args) -> AbstractContextManager:
    """Memory is not the limit once no pad tokens and no fp32 logits are stored."""
    spellings = ("activation_checkpointing", "gradient_checkpointing")  # transformers 5.24 / 5.17
    return patch_attributes(args, **{name: False for name in spellings if hasattr(args, name)})


@contextmanager
def _no_host_waits(args) -> Iterator[None]:
    """Nothing in the optimizer step or the batch copy makes the host wait for the GPU, so it can queue work ahead
    (the device-side loss and the packed mask below remove the waits inside the forward)."""
    optim = "adamw_torch_fused" if args.optim == "adamw_torch" else args.optim  # the same AdamW, one kernel for all
    with ExitStack() as undo:
        undo.enter_context(patch_attributes(
            args, optim=optim,
            logging_nan_inf_filter=False,  # it reads the loss on the host after every step
            dataloader_pin_memory=True,  # pinned batches copy to the GPU without a host wait
        ))
        undo.enter_context(patch_attributes(args.accelerator_config, non_blocking=True))
        yield


def _collate_in_a_worker(args) -> AbstractContextManager:
    """Read and collate the next batch in a dataloader worker, beside the step (a recipe's own setting stays)."""
    workers = {"dataloader_num_workers": 1, "dataloader_persistent_workers": True}
    return patch_attributes(args, **(workers if args.dataloader_num_workers == 0 else {}))


CHANGES: tuple[Change, ...] = (
    Change("padding-free batch", _one_padding_free_batch, _cut_rows),
    Change("no activation checkpointing", _no_activation_checkpointing),
    Change("no host waits around the step", _no_host_waits),
    Change("collation in a dataloader worker", _collate_in_a_worker),
    Change("compiled decoder layers",
           lambda args: patch_attributes(args, use_liger_kernel=False),  # the compiled layers fuse what Liger would
           lambda trainer, _: compiled_decoder_layers(trainer.model)),
    Change("loss metrics kept on the device", to_trainer=lambda trainer, _: keep_loss_metrics_on_device(trainer)),
    Change("module walks listed once", to_trainer=lambda trainer, _: list_module_walks_once(trainer)),
    Change("trained positions from the collator",  # needs the device-side loss above, which passes them on
           to_trainer=lambda trainer, _: score_collated_positions(trainer)),
    Change("packed mask without a host read", to_trainer=lambda trainer, _: packed_masks_without_host_read()),
)


def change_arguments(training_args, undo: ExitStack):
    """Apply every change's `to_args` to `training_args` in place, registered on `undo`; returns a copy of the
    arguments as they were."""
    recipe_args = copy.copy(training_args)
    for change in CHANGES:
        if change.to_args is not None:
            undo.enter_context(change.to_args(training_args))
    return recipe_args


def change_trainer(trainer, recipe_args, undo: ExitStack) -> None:
    """Apply every change's `to_trainer` to the built trainer, in order, registered on `undo`."""
    for change in CHANGES:
        if change.to_trainer is not None:
            undo.enter_context(change.to_trainer(trainer, recipe_args))
    logger.info("fast path: {}", ", ".join(change.name for change in CHANGES))


# --- what the changes use ------------------------------------------------------------------------------------------
def truncate_tokenized(dataset, max_length: int | None):
    """Cut tokenized rows to max_length from the start and drop those left with nothing to train, as TRL's
    `truncation_mode="keep_start"` does."""
    if dataset is None or max_length is None:
        return dataset
    columns = [c for c in ("input_ids", "labels", "completion_mask", "assistant_masks") if c in dataset.column_names]
    if max(len(ids) for ids in dataset["input_ids"]) <= max_length:
        return dataset
    cut = dataset.map(lambda row: {c: row[c][:max_length] for c in columns}, desc=f"truncating to {max_length}")
    if "labels" in columns:  # a prompt that fills max_length leaves no label to train on
        cut = cut.filter(lambda labels: any(label != -100 for label in labels), input_columns="labels")
    return cut


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a (possibly PEFT-wrapped) causal LM."""
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and hasattr(layers[0], "self_attn"):
            return layers
    raise ValueError(f"no decoder layers found in {type(model).__name__}")


def _autocast_off(forward):
    """Run a decoder layer with autocast disabled: its weights and activations are already bf16, and torch 2.11's
    dynamo cannot trace flex attention's autocast dispatch (`all unwrapped values must be FakeTensor`)."""

    def forward_without_autocast(*args, **kwargs):
        with torch.autocast("cuda", enabled=False):
            return forward(*args, **kwargs)

    return forward_without_autocast


@contextmanager
def compiled_decoder_layers(model: nn.Module) -> Iterator[int]:
    """Each decoder layer compiled in place (regional compilation: one graph reused by all identical layers) until
    the context ends; yields how many."""
    layers = decoder_layers(model)
    with ExitStack() as undo:
        # One graph per (sliding | global layer) x (first length | symbolic length) x (train | no-grad eval) is already
        # dynamo's default limit of 8; past it a layer silently runs eagerly, so leave room.
        undo.enter_context(internals.recompile_limit_at_least(64))
        for layer in layers:
            undo.enter_context(patch_attribute(layer, "forward", _autocast_off(layer.forward)))
            # dynamic=None (compile()'s default): one static graph first, then one symbolic-length graph once a second
            # length appears. (dynamic=True would also turn Gemma-2's soft-cap constant into a CPU tensor, which flex
            # attention's lowering rejects.)
            undo.enter_context(internals.compiled(layer))
        logger.info("fast path: compiled {} decoder layers", len(layers))
        yield len(layers)


def find_packed_sequence_indices(position_ids: torch.Tensor) -> torch.Tensor:
    """transformers' `masking_utils.find_packed_sequence_indices` without its host read (see below)."""
    first_dummy_value = position_ids[:, :1] - 1
    return (torch.diff(position_ids, prepend=first_dummy_value, dim=-1) != 1).cumsum(-1)


@contextmanager
def packed_masks_without_host_read() -> Iterator[None]:
    """Stop transformers from asking the host whether `position_ids` hold several sequences, until the context ends.

    `masking_utils.find_packed_sequence_indices` ends in `if (...).all(): return None`, a host read that waits for
    the GPU to finish everything queued, at the start of every forward and once per mask (Gemma-2 builds two). Its
    answer only lets a batch of one sequence skip the per-sample mask; for flex attention the sample-id mask is exact
    in both cases, so this version always returns it, computed the same way, with no host read. It replaces the
    function process-wide, which is why only the fast path (flex attention, a training process) does it."""
    module, name = internals.packed_sequence_check()
    with patch_attribute(module, name, find_packed_sequence_indices):
        yield
