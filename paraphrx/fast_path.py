"""The GPU fast path for QLoRA SFT of Gemma-2: the same model and loss as the reference recipe, computed faster.

What the reference (QLoRA, NF4, eager, padded micro-batches) spends its time on, and what this module changes:

1. **Frozen NF4 weights are dequantized once, not twice per micro-step.** bitsandbytes dequantizes every 4-bit
   weight to bf16 in each forward and again in each backward, then runs a bf16 matmul. The base is frozen, so
   `dequantize_frozen_base` does that dequantization once at load and keeps plain bf16 `nn.Linear` layers: the
   matmuls see bit-identical weights (the NF4-rounded values) at +~3 GB for gemma-2-2b.
2. **Padding-free batches** (TRL `padding_free`) with **flex attention**: one flattened sequence per step, no pad
   tokens. transformers derives a block-diagonal causal mask from `position_ids`, so samples never see each other,
   and Gemma-2's attention soft-capping (50) is applied in flex's `score_mod`.
3. **Regional `torch.compile`** of each decoder layer (`compile_decoder_layers`): fuses RMSNorm, GeGLU, RoPE,
   soft-capping, residual adds and LoRA dropout/scaling, and removes most kernel launches; the identical layers
   share one compiled graph. Sequence length is marked dynamic, so one graph serves every packed length.
4. **No full logits**: TRL's SFTTrainer already projects only the completion positions through the 256k-vocab LM
   head, in tiles, with Gemma-2's final soft-capping (30); Liger's kernels add nothing once the layers are compiled.

Everything here is opt-in through the recipe key `fast_path` (`auto` = on when CUDA is available). The CPU path is
the plain one: eager attention, bitsandbytes NF4, no compile (flex attention has no backward on the CPU).
"""

from __future__ import annotations

import torch
from loguru import logger
from torch import nn

FAST_PATH_CHOICES = ("auto", "on", "off")

# The SFTConfig values the fast path relies on; the GPU recipes set them (README "Speed").
FAST_SFT_SETTINGS = {"padding_free": True, "gradient_checkpointing": False, "use_liger_kernel": False}
FAST_ATTN_IMPLEMENTATION = "flex_attention"


def fast_path_enabled(choice: str) -> bool:
    """Resolve the recipe's `fast_path` value: `auto` means on exactly when a CUDA device is present."""
    if choice not in FAST_PATH_CHOICES:
        raise ValueError(f"fast_path must be one of {FAST_PATH_CHOICES}, got {choice!r}")
    if choice == "off":
        return False
    if not torch.cuda.is_available():
        if choice == "on":
            raise ValueError("fast_path: on needs a CUDA GPU (flex attention has no backward on the CPU); use auto/off")
        return False
    return True


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


def _attention_outside_graph() -> str:
    """Register flex attention under a name whose call dynamo skips, so the layer compiles around it."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.flex_attention import flex_attention_forward
    from transformers.masking_utils import flex_attention_mask

    name = "paraphrx_flex"
    # recursive: the whole call runs outside the layer's graph, through transformers' own compiled flex kernel.
    AttentionInterface.register(name, torch.compiler.disable(flex_attention_forward))
    AttentionMaskInterface.register(name, flex_attention_mask)
    return name


def compile_decoder_layers(model: nn.Module, mode: str = "whole") -> int:
    """Compile each decoder layer's pieces in place (regional compilation: identical layers share the code).

    mode "whole": the layer with attention inside the graph (autocast off in the layer); "split": the layer with
    attention outside the graph; "mlp": only the MLP and the four RMSNorms of each layer.
    """
    layers = decoder_layers(model)
    if mode == "split":
        name = _attention_outside_graph()
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and getattr(config, "_attn_implementation", None) == "flex_attention":
                config._attn_implementation = name
    for layer in layers:
        # dynamic=None: a static graph first, then one symbolic-length graph when a second length appears. (True
        # would also make Gemma-2's soft-cap constant a CPU tensor, which flex attention's lowering rejects.)
        if mode == "mlp":
            for name, child in layer.named_children():
                if name == "mlp" or name.endswith("layernorm"):
                    child.compile()
            continue
        if mode == "whole":
            layer.forward = _autocast_off(layer.forward)
        layer.compile()
    logger.info("fast path: compiled {} decoder layers (mode {})", len(layers), mode)
    return len(layers)
