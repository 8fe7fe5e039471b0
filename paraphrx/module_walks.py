"""The Trainer's per-step walks over every module and parameter, done once at the start instead.

A PEFT-wrapped gemma-2-2b has 2,219 modules and 652 parameter tensors, of which 364 (the LoRA A/B) train. Every
optimizer step, transformers' Trainer walks them in Python four times: `model.train()`, `floating_point_ops`
(counting the parameters again), gradient clipping over `model.parameters()`, and `model.zero_grad()`, between the
backward and the next forward, while the GPU has nothing queued (docs/speed.md; the measured cost is in
benchmarks/RESULTS.md). The module tree and the set of trainable tensors do not change while training, so
`cache_module_walks` lists them once and gives the model a `train` and a `zero_grad` that go through those lists,
with the same effect; `list_module_walks_once` also has the trainer clip over the trainable list and count the
parameters once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from loguru import logger
from torch import nn
from transformers import PreTrainedModel

from paraphrx import library_internals as internals
from paraphrx.patches import patch_attribute


def _plain_train(module: nn.Module) -> bool:
    """Whether `module.train(mode)` only sets `training` (transformers' override also re-applies hub kernels)."""
    kind = type(module).train
    return kind is nn.Module.train or (kind is PreTrainedModel.train and not getattr(module, "use_kernels", False))


@contextmanager
def cache_module_walks(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Give `model` list-based `train`/`eval`/`zero_grad` (instance attributes, the class is untouched) until the
    context ends; yields its trainable parameters. Enter once the model is final (adapters attached, layers
    compiled)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    modules = list(model.modules())

    def zero_grad(set_to_none: bool = True) -> None:
        # frozen tensors never receive a gradient, so clearing the trainable ones is Module.zero_grad's effect
        for param in trainable:
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                param.grad.detach_() if param.grad.grad_fn is not None else param.grad.requires_grad_(False)
                param.grad.zero_()

    def train(mode: bool = True) -> nn.Module:
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for module in modules:  # what Module.train's recursion sets; nn.Module.__setattr__ would cost 1 us each
            module.__dict__["training"] = mode
        return model

    with ExitStack() as undo:
        undo.enter_context(patch_attribute(model, "zero_grad", zero_grad))
        if all(_plain_train(module) for module in modules):
            undo.enter_context(patch_attribute(model, "train", train))  # Module.eval() calls self.train(False) too
        else:
            logger.debug("a module overrides train(); model.train() keeps walking the module tree")
        yield trainable


@contextmanager
def list_module_walks_once(trainer) -> Iterator[None]:
    """The trainer's model walks its modules only through lists made once (`cache_module_walks`), the trainer clips
    gradients over the trainable list and counts the parameters for its FLOP estimate once (until the context ends)."""
    with ExitStack() as undo:
        trainable = undo.enter_context(cache_module_walks(trainer.model))
        if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):  # they clip their own sharded tensors

            def clip_grad_norm(model):
                # the same tensors with gradients as model.parameters() holds, without walking every module
                return trainer.accelerator.clip_grad_norm_(trainable, trainer.args.max_grad_norm)

            undo.enter_context(patch_attribute(trainer, internals.CLIP_GRAD_NORM, clip_grad_norm))
        undo.enter_context(patch_attribute(trainer, "floating_point_ops", _flops_counted_once(trainer.model)))
        yield


def _flops_counted_once(model):
    """Trainer's `floating_point_ops` estimate (6 x tokens x non-embedding parameters) with the parameter count taken
    once: Trainer recounts it every step, a walk over every module."""
    count = None

    def floating_point_ops(inputs) -> int:
        nonlocal count
        main_input = getattr(model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(model, "num_parameters"):
            return 0
        if count is None:
            count = model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main_input].numel() * count

    return floating_point_ops
