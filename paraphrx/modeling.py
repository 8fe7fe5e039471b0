"""The one model loader of training and evaluation: the tokenizer and the (4-bit) base model a ModelConfig describes.

Both stages load the base the same way, so an adapter is evaluated on the base it trained on: TRL's ModelConfig
decides dtype, 4-bit NF4 quantisation and attention; on CUDA the whole model goes to this process's GPU (FSDP and
DeepSpeed place and shard the weights themselves); `trust_remote_code` is off unless the caller's recipe or flags
turn it on. The LoRA adapter itself is applied by SFTTrainer from `peft_config` in training (as in TRL's own
scripts/sft.py) and by peft in evaluation.

On the fast path the base is loaded with flex attention and its frozen NF4 weights are dequantized once
(`dequantize_frozen_base`, also usable on an evaluation base: the same NF4-rounded values training saw).
"""

from __future__ import annotations

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from loguru import logger
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig, get_quantization_config

from paraphrx.errors import EXIT_FAILED, UserError, loading
from paraphrx.paths import source_problem

# Gemma-2's attention-logit soft-capping is applied by eager attention and by flex attention, not by plain SDPA.
DEFAULT_ATTN_IMPLEMENTATION = "eager"
FAST_ATTN_IMPLEMENTATION = "flex_attention"  # soft-capping in `score_mod`, packed samples kept apart (fast_path.py)


class ModelLoadError(UserError):
    """The base model or its tokenizer cannot be loaded: not found, not reachable, gated, or not a model."""

    exit_code = EXIT_FAILED


def device_map(use_cpu: bool = False) -> dict | None:
    """Under DDP (and alone) each process holds a whole model on its own GPU; FSDP and DeepSpeed place (and shard)
    the weights themselves, and the CPU (no GPU, or a recipe's `use_cpu`) needs no map. (TRL 1.16 no longer ships
    `get_kbit_device_map`.)"""
    state = PartialState()
    sharded = state.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if use_cpu or not torch.cuda.is_available() or sharded:
        return None
    return {"": state.local_process_index}


def check_model_source(model_args: ModelConfig, filename: str = "config.json") -> None:
    """A base model (or, with `tokenizer_config.json`, its tokenizer) that cannot be found without asking the Hub (a
    mistyped folder, or offline and not cached) is one line naming it, before anything is loaded (paths.py)."""
    if not model_args.model_name_or_path:
        raise ModelLoadError("model_name_or_path: no base model given (a folder or a Hub id)")
    problem = source_problem(model_args.model_name_or_path, model_args.model_revision, filename)
    if problem is not None:
        raise ModelLoadError(f"model_name_or_path {model_args.model_name_or_path}: {problem}")


def load_tokenizer(model_args: ModelConfig, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=trust_remote_code
    )


def load_base_model(
    model_args: ModelConfig, trust_remote_code: bool = False, fast_path: bool = False, use_cpu: bool = False
) -> PreTrainedModel:
    """The base model as `model_args` asks (e.g. NF4 4-bit with double quantisation and bf16 compute, eager
    attention when it names none), on this process's GPU unless `use_cpu`; on the fast path with flex attention and
    the NF4 weights dequantized once."""
    quantization_config = get_quantization_config(model_args)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    attention = FAST_ATTN_IMPLEMENTATION if fast_path else model_args.attn_implementation or DEFAULT_ATTN_IMPLEMENTATION
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
        attn_implementation=attention,
        dtype=dtype,
        quantization_config=quantization_config,
        device_map=device_map(use_cpu),
    )
    if quantization_config is not None:
        logger.info(
            "loaded {} in {} (quant type {}, double quant {}, compute dtype {}), attention {}",
            model_args.model_name_or_path,
            "4-bit" if quantization_config.load_in_4bit else "8-bit",
            quantization_config.bnb_4bit_quant_type,
            quantization_config.bnb_4bit_use_double_quant,
            quantization_config.bnb_4bit_compute_dtype,
            attention,
        )
    else:
        logger.info("loaded {} in {}, attention {}", model_args.model_name_or_path, model.dtype, attention)
    if fast_path and quantization_config is not None:
        dequantize_frozen_base(model, dtype=dtype if isinstance(dtype, torch.dtype) else torch.bfloat16)
    return model


def load_model_and_tokenizer(model_args: ModelConfig, training_args) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """What a training run loads: the base (on the fast path when the recipe resolved to it) and its tokenizer. A base
    that cannot be loaded is one line (ModelLoadError); an error after loading keeps its traceback."""
    with loading(f"base model {model_args.model_name_or_path}", ModelLoadError):
        model = load_base_model(
            model_args, training_args.trust_remote_code, training_args.use_fast_path, training_args.use_cpu
        )
        return model, load_tokenizer(model_args, training_args.trust_remote_code)


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
            linear = nn.Linear(
                child.in_features, child.out_features, bias=child.bias is not None, device=weight.device, dtype=dtype
            )
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
