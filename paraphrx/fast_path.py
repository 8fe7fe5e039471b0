"""The GPU fast path for QLoRA SFT of Gemma-2: the same model and loss as the reference recipe, computed faster.

What the reference (QLoRA, NF4, eager, padded micro-batches) spends its time on, and what this module changes:

1. **Frozen NF4 weights are dequantized once, not twice per micro-step.** bitsandbytes dequantizes every 4-bit
   weight to bf16 in each forward and again in each backward, then runs a bf16 matmul. The base is frozen, so
   `dequantize_frozen_base` does that dequantization once at load and keeps plain bf16 `nn.Linear` layers: the
   matmuls see bit-identical weights (the NF4-rounded values) at +~3 GB for gemma-2-2b.
2. **Padding-free batches** (TRL `padding_free`) with **flex attention**: one flattened sequence per step, no pad
   tokens. transformers derives a block-diagonal causal mask from `position_ids`, so samples never see each other,
   and Gemma-2's attention soft-capping (50) is applied in flex's `score_mod`.
3. **Regional `torch.compile`** of each decoder layer (`compile_decoder_layers`), flex attention inside the graph:
   fuses RMSNorm, GeGLU, RoPE, soft-capping, residual adds and LoRA dropout/scaling, lets inductor recompute cheap
   elementwise results instead of storing them, and removes most kernel launches; identical layers share one
   graph, and after the second packed length one symbolic-length graph serves every step.
4. **No full logits, none computed twice**: only the completion positions go through the 256k-vocab LM head, in
   tiles, with Gemma-2's final soft-capping (30), and each tile's gradient is formed while its logits are in memory
   (`lm_head.py`, on TRL's kernels); Liger's kernels add nothing once the layers are compiled.
5. **No host waits inside a step**, so Python queues the next kernels while the GPU works (`adapt_training_args`,
   `keep_packed_masks_on_device`, `ParaphrxSFTTrainer.compute_loss` keeping TRL's metrics on the device, and the
   LM head scoring positions the collator found: `completion_positions.py`).
6. **Little host work between steps**, when the GPU has nothing queued: batches are read and collated in a
   dataloader worker, and the Trainer's per-step walks over all modules are done once (`module_walks.py`).

Everything here is switched by the recipe key `fast_path` (`auto` = on when CUDA is available and the launch is not
FSDP/DeepSpeed, which shard the 4-bit base). The CPU path is the plain one: eager attention, bitsandbytes NF4, no
compile (flex attention has no backward on the CPU).
"""

from __future__ import annotations

import os

import torch
from loguru import logger
from torch import nn

FAST_PATH_CHOICES = ("auto", "on", "off")

FAST_ATTN_IMPLEMENTATION = "flex_attention"


def sharded_launch() -> str | None:
    """FSDP or DeepSpeed, as `accelerate launch` announces them to the training process."""
    for engine in ("FSDP", "DEEPSPEED"):
        if os.environ.get(f"ACCELERATE_USE_{engine}", "false").lower() in ("1", "true"):
            return engine
    return None


def fast_path_enabled(choice: str) -> bool:
    """Resolve the recipe's `fast_path` value: `auto` means on exactly when a CUDA device is present and the run is
    not sharded (FSDP-QLoRA and ZeRO-3 exist to shard the 4-bit base, which the fast path would dequantize)."""
    if choice not in FAST_PATH_CHOICES:
        raise ValueError(f"fast_path must be one of {FAST_PATH_CHOICES}, got {choice!r}")
    if choice == "off":
        return False
    sharded = sharded_launch()
    if not torch.cuda.is_available() or sharded:
        if choice == "on":
            why = f"a {sharded} launch shards the 4-bit base" if sharded else "it needs a CUDA GPU"
            raise ValueError(f"fast_path: on is not possible here: {why}; use auto or off")
        return False
    return True


def adapt_training_args(training_args) -> int | None:
    """Switch an SFTConfig to the fast path in place, keeping the optimisation identical.

    The examples per optimizer step stay the same (micro-batch x accumulation becomes one padding-free batch),
    activation checkpointing goes (memory is not the limit once no pad tokens and no fp32 logits are stored), and
    `max_length` moves from TRL (which refuses it with padding-free batches) to `truncate_tokenized`.
    Returns the max_length to truncate to.
    """
    examples = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps = examples, 1
    training_args.padding_free = True
    training_args.use_liger_kernel = False  # compiled layers already fuse what Liger would
    for name in ("activation_checkpointing", "gradient_checkpointing"):  # transformers 5.24 / 5.17 spelling
        if hasattr(training_args, name):
            setattr(training_args, name, False)
    max_length, training_args.max_length = training_args.max_length, None
    # Keep the host from waiting on the GPU inside a step, so it can queue work ahead (see keep_packed_masks_on_device
    # and ParaphrxSFTTrainer.compute_loss for the other waits removed):
    if training_args.optim == "adamw_torch":
        training_args.optim = "adamw_torch_fused"  # the same AdamW update, one kernel for all LoRA tensors
    training_args.logging_nan_inf_filter = False  # it reads the loss on the host after every step
    training_args.dataloader_pin_memory = True  # pinned batches copy to the GPU without a host wait
    if training_args.dataloader_num_workers == 0:  # read and collate the next batch in a worker, beside the step
        training_args.dataloader_num_workers, training_args.dataloader_persistent_workers = 1, True
    training_args.accelerator_config.non_blocking = True
    logger.info("fast path: one padding-free batch of {} examples per optimizer step, flex attention, no "
                "activation checkpointing, sequences cut at {} tokens", examples, max_length)
    return max_length


def truncate_tokenized(dataset, max_length: int | None):
    """Cut tokenized rows to max_length from the start, as TRL's `truncation_mode="keep_start"` would."""
    if dataset is None or max_length is None:
        return dataset
    columns = [c for c in ("input_ids", "completion_mask", "assistant_masks") if c in dataset.column_names]
    if max(len(ids) for ids in dataset["input_ids"]) <= max_length:
        return dataset
    return dataset.map(lambda row: {c: row[c][:max_length] for c in columns}, desc=f"truncating to {max_length}")


def dequantize_frozen_base(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every bitsandbytes `Linear4bit` with a frozen `nn.Linear` holding its dequantized weight.

    Call before LoRA adapters are attached. The values are exactly what bitsandbytes would dequantize on every
    call, so forward and gradients are unchanged; only the repeated dequantization work disappears.
    Returns the number of layers replaced.
    """
    import bitsandbytes as bnb

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            weight = bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state).to(dtype)
            linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                               device=weight.device, dtype=dtype)
            linear.weight = nn.Parameter(weight, requires_grad=False)
            if child.bias is not None:
                linear.bias = nn.Parameter(child.bias.data.to(dtype), requires_grad=False)
            setattr(parent, name, linear)
            replaced += 1
    if replaced:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("fast path: dequantized {} frozen NF4 linear layers to {} once", replaced, dtype)
    return replaced


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


def compile_decoder_layers(model: nn.Module) -> int:
    """Compile each decoder layer in place (regional compilation: one graph reused by all identical layers)."""
    layers = decoder_layers(model)
    # One graph per (sliding | global layer) x (first length | symbolic length) x (train | no-grad eval) is already
    # dynamo's default limit of 8; past it a layer silently runs eagerly, so leave room.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for layer in layers:
        layer.forward = _autocast_off(layer.forward)
        # dynamic=None: one static graph first, then one symbolic-length graph once a second length appears.
        # (dynamic=True would also turn Gemma-2's soft-cap constant into a CPU tensor, which flex attention's
        # lowering rejects.)
        layer.compile()
    logger.info("fast path: compiled {} decoder layers", len(layers))
    return len(layers)


def keep_packed_masks_on_device() -> None:
    """Stop transformers from asking the host whether `position_ids` hold several sequences.

    `masking_utils.find_packed_sequence_indices` ends in `if (...).all(): return None`, a host read that waits for
    the GPU to finish everything queued, at the start of every forward and once per mask (Gemma-2 builds two). Its
    answer only lets a batch of one sequence skip the per-sample mask; for flex attention the sample-id mask is exact
    in both cases, so this version always returns it, computed the same way, with no host read. It replaces the
    function process-wide, which is why only the fast path (flex attention, a training process) calls it."""
    from transformers import masking_utils

    def find_packed_sequence_indices(position_ids: torch.Tensor) -> torch.Tensor:
        first_dummy_value = position_ids[:, :1] - 1
        return (torch.diff(position_ids, prepend=first_dummy_value, dim=-1) != 1).cumsum(-1)

    masking_utils.find_packed_sequence_indices = find_packed_sequence_indices
