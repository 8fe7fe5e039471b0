"""The Trainer's per-step walks over every module and parameter, done once at the start instead.

A PEFT-wrapped gemma-2-2b has 2,219 modules and 652 parameter tensors, of which 364 (the LoRA A/B) train. Every
optimizer step, transformers' Trainer walks them in Python four times: `model.train()`, `floating_point_ops`
(counting the parameters again), gradient clipping over `model.parameters()`, and `model.zero_grad()`, between the
backward and the next forward, while the GPU has nothing queued (≈10 ms of plain Python per step in the H200
profile of `benchmarks/bench_train.py`; 1.23x tokens/s once gone, benchmarks/RESULTS.md). The module tree and
the set of trainable tensors do not change while training, so `cache_module_walks` lists them once and gives the
model a `train` and a `zero_grad` that go through those lists, with the same effect; `ParaphrxSFTTrainer` clips
over the trainable list and caches the parameter count.
"""

from __future__ import annotations

from loguru import logger
from torch import nn
from transformers import PreTrainedModel


def _plain_train(module: nn.Module) -> bool:
    """Whether `module.train(mode)` only sets `training` (transformers' override also re-applies hub kernels)."""
    kind = type(module).train
    return kind is nn.Module.train or (kind is PreTrainedModel.train and not getattr(module, "use_kernels", False))


def cache_module_walks(model: nn.Module) -> list[nn.Parameter]:
    """Give `model` list-based `train`/`eval`/`zero_grad` (instance attributes, the class is untouched) and return
    its trainable parameters. Call once the model is final (adapters attached, layers compiled)."""
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

    model.zero_grad = zero_grad
    if all(_plain_train(module) for module in modules):

        def train(mode: bool = True) -> nn.Module:
            if not isinstance(mode, bool):
                raise ValueError("training mode is expected to be boolean")
            for module in modules:  # what Module.train's recursion sets; nn.Module.__setattr__ would cost 1 us each
                module.__dict__["training"] = mode
            return model

        model.train = train  # Module.eval() calls self.train(False), so it takes this path too
    else:
        logger.debug("a module overrides train(); model.train() keeps walking the module tree")
    return trainable

