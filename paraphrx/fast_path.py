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
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass

import torch
from loguru import logger
from torch import nn

from paraphrx import library_internals as internals
from paraphrx.compile_cache import compile_cache_folder
from paraphrx.completion_positions import score_collated_positions
from paraphrx.device_loss import keep_loss_metrics_on_device
from paraphrx.module_walks import list_module_walks_once
from paraphrx.packed_evaluation import packed_evaluation, token_lengths
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
    return patch_attributes(
        args, per_device_train_batch_size=examples, gradient_accumulation_steps=1, padding_free=True, max_length=None
    )


@contextmanager
def _cut_rows(trainer, recipe_args) -> Iterator[None]:
    max_length = recipe_args.max_length
    with patch_attributes(
        trainer,
        train_dataset=truncate_tokenized(trainer.train_dataset, max_length),
        eval_dataset=truncate_tokenized(trainer.eval_dataset, max_length),
    ):
        logger.info(
            "fast path: one padding-free batch of {} examples per optimizer step, sequences cut at {} tokens",
            trainer.args.per_device_train_batch_size,
            max_length,
        )
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
        undo.enter_context(
            patch_attributes(
                args,
                optim=optim,
                logging_nan_inf_filter=False,  # it reads the loss on the host after every step
                dataloader_pin_memory=True,  # pinned batches copy to the GPU without a host wait
            )
        )
        undo.enter_context(patch_attributes(args.accelerator_config, non_blocking=True))
        yield


def _collate_in_a_worker(args) -> AbstractContextManager:
    """Read and collate the next batch in a dataloader worker, beside the step (a recipe's own setting stays)."""
    workers = {"dataloader_num_workers": 1, "dataloader_persistent_workers": True}
    return patch_attributes(args, **(workers if args.dataloader_num_workers == 0 else {}))


# Processes SFTTrainer tokenizes in: on the H200's 16-core host its preparation of the 22k training rows of the
# held-out-size data took 11.5 s on 4, 7.1 s on 8 and 5.7 s on 16 (each map starts its own pool, so it scales poorly).
TOKENIZE_PROCESSES = 16


def tokenize_processes() -> int | None:
    """How many processes the fast path tokenizes in: every core up to TOKENIZE_PROCESSES; None (one) below 4."""
    cores = os.cpu_count() or 1
    return min(TOKENIZE_PROCESSES, cores) if cores >= 4 else None


def _prepare_rows_on_several_cores(args) -> AbstractContextManager:
    """SFTTrainer tokenizes the rows in one process by default (~2.7k rows/s on one core: ~8 s of start-up for the
    22k training rows of the held-out-size data, a minute at the full upstream size); on a machine with 4 or more
    cores it uses `tokenize_processes()` (TRL's `dataset_num_proc`; a recipe's own setting stays). The rows are the
    same."""
    processes = tokenize_processes()
    parallel = {"dataset_num_proc": processes} if args.dataset_num_proc is None and processes else {}
    return patch_attributes(args, **parallel)


def _evaluate_packed(trainer, recipe_args) -> AbstractContextManager:
    """Evaluation rows cut like the training rows, scored many per forward (packed_evaluation.py)."""
    return packed_evaluation(trainer, prepare_rows=lambda rows: truncate_tokenized(rows, recipe_args.max_length))


CHANGES: tuple[Change, ...] = (
    Change("padding-free batch", _one_padding_free_batch, _cut_rows),
    Change("no activation checkpointing", _no_activation_checkpointing),
    Change("no host waits around the step", _no_host_waits),
    Change("collation in a dataloader worker", _collate_in_a_worker),
    Change("rows tokenized on several cores", _prepare_rows_on_several_cores),
    Change("compile caches in one folder", to_args=lambda args: compile_cache_folder()),
    Change(
        "compiled decoder layers",
        lambda args: patch_attributes(args, use_liger_kernel=False),  # the compiled layers fuse what Liger would
        lambda trainer, _: compiled_decoder_layers(trainer.model),
    ),
    Change(
        "one attention mask for every layer",
        to_trainer=lambda trainer, recipe_args: one_mask_for_every_layer(trainer.model, recipe_args.max_length),
    ),
    Change("block masks compiled once", to_trainer=lambda trainer, _: block_masks_compiled_once()),
    Change("loss metrics kept on the device", to_trainer=lambda trainer, _: keep_loss_metrics_on_device(trainer)),
    Change("module walks listed once", to_trainer=lambda trainer, _: list_module_walks_once(trainer)),
    Change(
        "trained positions from the collator",  # needs the device-side loss above, which passes them on
        to_trainer=lambda trainer, _: score_collated_positions(trainer),
    ),
    Change("packed mask without a host read", to_trainer=lambda trainer, _: packed_masks_without_host_read()),
    Change("packed evaluation", to_trainer=_evaluate_packed),
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
    if len(dataset) == 0 or max(token_lengths(dataset)) <= max_length:
        return dataset
    cut = dataset.map(
        lambda rows: {c: [values[:max_length] for values in rows[c]] for c in columns},
        batched=True,
        desc=f"truncating to {max_length}",
    )
    if "labels" in columns:  # a prompt that fills max_length leaves no label to train on
        cut = cut.filter(
            lambda rows: [any(label != -100 for label in labels) for labels in rows],
            batched=True,
            input_columns="labels",
        )
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
def inputs_require_grad_in_training(model: nn.Module) -> Iterator[None]:
    """The input embeddings' output requires grad whenever grad is on, until the context ends.

    dynamo guards on whether a compiled layer's input requires grad: the first layer's comes from the frozen
    embedding and would not, every later one's does (LoRA in the layers before), which made the first layer a
    second training graph (its own compile at start-up). With this, one graph serves all layers; the price is the
    first layer's input gradient, which the backward computes and drops (~1/26 of the backward's input-gradient
    GEMMs). Unlike transformers' `enable_input_require_grads`, nothing changes under no_grad, so evaluation keeps a
    single graph too."""

    def require_grad(module, args, output):
        if torch.is_grad_enabled():
            output.requires_grad_(True)

    handle = model.get_input_embeddings().register_forward_hook(require_grad)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def compiled_decoder_layers(model: nn.Module, backend: str = "inductor") -> Iterator[int]:
    """Each decoder layer compiled in place (regional compilation: one graph reused by all identical layers) until
    the context ends; yields how many.

    `dynamic=True`: one graph whose sequence length is symbolic serves every packed length from the first step on
    (static first, as compile() would, meant a recompilation at the second step and again after a resume), in this
    process and, through the compile caches, in the next. With the first layer's input requiring grad like the others'
    (`inputs_require_grad_in_training`) and one mask for all layers (`one_mask_for_every_layer`), that is one graph
    for training and one for the no-grad evaluation."""
    layers = decoder_layers(model)
    with ExitStack() as undo:
        # dynamo's default limit of 8 graphs per function; past it a layer silently runs eagerly, so leave room
        undo.enter_context(internals.recompile_limit_at_least(64))
        undo.enter_context(internals.floats_specialized())  # the soft-caps stay constants in the symbolic graph
        undo.enter_context(inputs_require_grad_in_training(model))
        for layer in layers:
            undo.enter_context(patch_attribute(layer, "forward", _autocast_off(layer.forward)))
            undo.enter_context(internals.compiled(layer, dynamic=True, backend=backend))
        logger.info("fast path: compiled {} decoder layers", len(layers))
        yield len(layers)


@contextmanager
def one_mask_for_every_layer(model: nn.Module, max_length: int | None) -> Iterator[bool]:
    """Gemma-2's sliding-window layers get the causal mask its global layers get, until the context ends, when no row
    can be longer than the window; yields whether they do.

    A global layer lets a token see every earlier token of its row; a sliding one only the last `sliding_window`
    (4096) of them. In a packed batch a row of n tokens sees only its own keys, all within n - 1 positions, so when
    every row is at most `sliding_window` tokens (rows are cut at `max_length`: 1024 in the recipes) both masks allow
    exactly the same keys (tests/paraphrx/test_fast_path.py compares them and a row past the window as a control).
    Two masks cost a second compiled graph for every decoder layer and for the mask builder (dynamo guards on the
    mask's function) and a second block mask per forward. Process-wide (the name in the model's modeling module),
    as only the fast path's training process, whose rows are all cut at `max_length`, does it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    window, builders = getattr(config, "sliding_window", None), internals.mask_builders(base)
    if builders is None or window is None or "sliding_attention" not in (getattr(config, "layer_types", None) or ()):
        yield False
        return
    if max_length is None or max_length > window:
        logger.info(
            "fast path: the sliding-window layers keep their own mask: rows of {} tokens may exceed the window of {}",
            max_length or "any number of",
            window,
        )
        yield False
        return
    module, causal_mask = builders
    with patch_attribute(module, internals.SLIDING_MASK_BUILDER, causal_mask):
        logger.info(
            "fast path: one attention mask for every layer (rows of at most {} tokens, window {})", max_length, window
        )
        yield True


@contextmanager
def block_masks_compiled_once(backend: str = "inductor") -> Iterator[None]:
    """Flex attention's block masks built by one length-symbolic compilation of torch's `create_block_mask`, outside
    autograd and autocast (process-wide, until the context ends).

    transformers compiles `create_block_mask` with static lengths: it compiled again when the packed length first
    changed (the second step, and again after a resume) and under no_grad (the first evaluation). A block mask is
    integer work that needs neither a gradient nor autocast, so one graph serves training and evaluation alike."""
    from torch.nn.attention import flex_attention

    compiled = torch.compile(flex_attention.create_block_mask, dynamic=True, backend=backend)

    def create_block_mask(*args, _compile: bool = False, **kwargs):
        device = torch.device(kwargs.get("device", "cuda"))
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            return compiled(*args, **kwargs)

    module, name = internals.block_mask_builder()
    with patch_attribute(module, name, create_block_mask):
        yield


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
