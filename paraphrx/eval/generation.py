"""Attach the adapters to the base (loaded once by modeling.load_base_model, as training loads it) and answer
prompts greedily in left-padded batches.

The upstream code cut each output at its attention-mask length, which in a left-padded batch lands inside the
prompt for every row shorter than the longest; here every row of a batch is cut at `input_ids.shape[1]`, the padded
prompt length, which is where generated tokens start for all rows.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

BASE = "base"


def for_generation(tokenizer):
    """The tokenizer set up for batched generation: generated tokens must follow the prompt directly in every row,
    so pad on the left (with `<eos>` where the tokenizer has no pad token)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def attach_adapters(model, adapters: dict[str, Path]):
    """Wrap the base once in a PeftModel holding every adapter under its name (switch with `active_model`)."""
    from peft import PeftModel

    peft_model = None
    for name, path in adapters.items():
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
        else:
            peft_model.load_adapter(str(path), adapter_name=name, is_trainable=False)
    if peft_model is not None:
        peft_model.eval()
    return peft_model or model


def merge_adapter(model, adapter_path: Path):
    """`merge_and_unload()`: one adapter folded into the base weights (on a 4-bit base, re-rounded to NF4)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False).merge_and_unload().eval()


@contextmanager
def active_model(model, name: str) -> Iterator:
    """Generate as `name`: the base model ("base") with every adapter disabled, or one named adapter."""
    if not hasattr(model, "peft_config"):
        yield model
    elif name == BASE:
        with model.disable_adapter():
            yield model
    else:
        model.set_adapter(name)
        yield model


def cut_at_input_length(output_ids: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The generated part of `generate`'s output: everything after the (left-padded) prompt columns."""
    return output_ids[:, input_ids.shape[1] :]


def greedy_config(model, tokenizer, max_new_tokens: int, **overrides):
    """The model's generation config, made greedy; its eos ids stay (gemma: both <eos> and <end_of_turn>)."""
    config = copy.deepcopy(model.generation_config)
    config.update(
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )
    if config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    return config


def generate_batched(
    model,
    tokenizer,
    prompts: list[str],
    batch_size: int = 32,
    max_new_tokens: int = 256,
    on_batch: Callable[[list[str], list[str]], None] | None = None,
    desc: str = "generate",
    batch_generate_kwargs: Callable[[list[str]], dict] | None = None,
    **generate_kwargs,
) -> list[str]:
    """Greedy answers to `prompts`, in their order. Prompts are sorted by length so batches carry little padding;
    the longest go first so an out-of-memory batch size fails at once. `on_batch(prompts, answers)` sees each batch
    as it finishes (the cache appends there). `batch_generate_kwargs(prompts)` gives extra `generate()` arguments
    for one batch (the benchmark's per-row logits processor)."""
    if tokenizer.padding_side != "left":
        raise ValueError("generate_batched needs tokenizer.padding_side == 'left'")
    config = greedy_config(model, tokenizer, max_new_tokens, **generate_kwargs)
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    answers: list[str | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not prompts):
        index = order[start : start + batch_size]
        batch = [prompts[i] for i in index]
        inputs = tokenizer(batch, padding=True, return_tensors="pt").to(device)
        extra = batch_generate_kwargs(batch) if batch_generate_kwargs is not None else {}
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config, **extra)
        texts = tokenizer.batch_decode(cut_at_input_length(output, inputs["input_ids"]), skip_special_tokens=True)
        for i, text in zip(index, texts):
            answers[i] = text
        if on_batch is not None:
            on_batch(batch, texts)
    return answers


def generate_per_example(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 256,
    batch_generate_kwargs: Callable[[list[str]], dict] | None = None,
    **generate_kwargs,
) -> list[str]:
    """The reference path: one unpadded `generate` call per prompt (what the batched path must reproduce)."""
    config = greedy_config(model, tokenizer, max_new_tokens, **generate_kwargs)
    device = next(model.parameters()).device
    answers = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(device)
        extra = batch_generate_kwargs([prompt]) if batch_generate_kwargs is not None else {}
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config, **extra)
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return answers
