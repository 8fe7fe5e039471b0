"""Model construction, in one place: the tokenizer, the (4-bit) base model and the LoRA config for SFTTrainer.

`load_model_and_tokenizer` is the single function that turns a recipe into a model, so switches that change how
the model is built (quantisation, attention kernel, future speed paths) all live here. The LoRA adapter itself is
applied by SFTTrainer from `peft_config`, as in TRL's own scripts/sft.py.
"""

from __future__ import annotations

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from loguru import logger
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig, SFTConfig, get_quantization_config

from paraphrx.fast_path import FAST_ATTN_IMPLEMENTATION, dequantize_frozen_base, fast_path_enabled


def kbit_device_map() -> dict | None:
    """Under DDP each process holds a whole 4-bit model on its own GPU; FSDP and DeepSpeed place (and shard) the
    weights themselves, and the CPU needs no map. (TRL 1.16 no longer ships `get_kbit_device_map`.)"""
    state = PartialState()
    if not torch.cuda.is_available() or state.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return None
    return {"": state.local_process_index}


def load_tokenizer(model_args: ModelConfig, training_args: SFTConfig) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )


def load_model_and_tokenizer(
    model_args: ModelConfig, training_args: SFTConfig
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model as the recipe asks (e.g. NF4 4-bit with double quantisation and bf16 compute) + its tokenizer."""
    quantization_config = get_quantization_config(model_args)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    fast = fast_path_enabled(getattr(training_args, "fast_path", "off"))
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        # flex attention applies Gemma-2's soft-capping and keeps packed samples apart (see fast_path.py)
        attn_implementation=FAST_ATTN_IMPLEMENTATION if fast else model_args.attn_implementation,
        dtype=dtype,
        quantization_config=quantization_config,
        device_map=kbit_device_map() if quantization_config is not None else None,
    )
    if quantization_config is not None:
        logger.info(
            "loaded {} in {} (quant type {}, double quant {}, compute dtype {})",
            model_args.model_name_or_path,
            "4-bit" if quantization_config.load_in_4bit else "8-bit",
            quantization_config.bnb_4bit_quant_type,
            quantization_config.bnb_4bit_use_double_quant,
            quantization_config.bnb_4bit_compute_dtype,
        )
    else:
        logger.info("loaded {} in {}", model_args.model_name_or_path, model.dtype)
    if fast and quantization_config is not None:
        dequantize_frozen_base(model, dtype=dtype if isinstance(dtype, torch.dtype) else torch.bfloat16)
    return model, load_tokenizer(model_args, training_args)


