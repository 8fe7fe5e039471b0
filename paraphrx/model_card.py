"""The run folder's README.md: a model card a Hub user can act on.

What made the adapter (base model and revision, dataset and revision, split, LoRA settings, steps, best eval_loss,
the command) and how to use it (PEFT, vLLM). The YAML header is huggingface_hub's `ModelCardData`; `base_model` and
`datasets` name Hub repos only, so a local base or dataset folder is named in the text, never linked as a Hub repo
(TRL's default card wrote "[None](https://huggingface.co/None)" and `huggingface.co/datasets/data/...`).
"""

from __future__ import annotations

import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from paraphrx.callbacks import full_validation_result
from paraphrx.paths import looks_local

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts
FRAMEWORKS = ("paraphrx", "trl", "transformers", "peft", "torch", "datasets", "bitsandbytes")


def is_hub_id(name: str | None) -> bool:
    """A name that can only be a Hub repo (`org/name` or `name`), not a folder on this machine."""
    return bool(name) and not looks_local(name) and not Path(name).expanduser().exists()


def launch_command() -> str | None:
    """How this training process was started (`python train_sft.py recipes/x.yaml --max_steps 5`); None when it is
    not train_sft.py (a notebook or a test calling train_sft.main)."""
    if Path(sys.argv[0]).name != "train_sft.py":
        return None
    return shlex.join(["python", *sys.argv])


def _link(name: str, kind: str = "") -> str:
    return f"[`{name}`](https://huggingface.co/{kind}{name})" if is_hub_id(name) else f"`{name}` (a local folder)"


def _versions() -> str:
    found = []
    for package in FRAMEWORKS:
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


def _eval_rows(dataset_record: dict) -> str:
    """The rows each scheduled evaluation scored: a fixed subset of the split's rows, or all of them."""
    rows, of_rows = dataset_record.get("eval_rows") or 0, dataset_record.get("full_eval_rows")
    if of_rows and rows < of_rows:
        return f"{rows:,} of its {of_rows:,} rows (a fixed subset, `eval_subset_rows`) every evaluation"
    return f"{rows:,} rows"


def render_model_card(recipe: dict, dataset_record: dict, state, location: str, command: str | None = None) -> str:
    """The card of a finished run: `recipe` is the resolved recipe (run_outputs.resolved_recipe), `dataset_record`
    what dataset.json holds, `state` the TrainerState, `location` where the adapter is loaded from (the Hub repo it
    is pushed to, else the run folder)."""
    from huggingface_hub import ModelCardData

    name = recipe.get("run_name") or location
    base, dataset = recipe.get("model_name_or_path"), dataset_record.get("dataset")
    header = ModelCardData(
        base_model=base if is_hub_id(base) else None,
        datasets=[dataset] if is_hub_id(dataset) else None,
        library_name="peft",
        pipeline_tag="text-generation",
        model_name=name,
        tags=["paraphrx", "trl", "sft", "lora", *(["qlora"] if recipe.get("load_in_4bit") else [])],
    )
    if recipe.get("load_in_4bit"):
        nested = " with double quantisation" if recipe.get("use_bnb_nested_quant") else ""
        precision = f"4-bit {recipe.get('bnb_4bit_quant_type')}{nested}"
        loaded = f"{precision}, compute in {recipe.get('dtype')}"
    else:
        precision = loaded = f"{recipe.get('dtype')}"
    revision = f" revision `{recipe.get('model_revision')}`" if is_hub_id(base) and recipe.get("model_revision") else ""
    data_revision = dataset_record.get("revision")
    data_line = _link(dataset, "datasets/") + (f" revision `{data_revision}`" if data_revision else "")
    if dataset_record.get("card_sha256"):
        data_line += f" (dataset card sha256 `{dataset_record['card_sha256'][:16]}…`)"
    targets = recipe.get("lora_target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else targets
    buckets = dataset_record.get("eval_buckets") or []
    contiguous = buckets == list(range(buckets[0], buckets[-1] + 1)) if buckets else False
    bucket_text = (
        f"bucket {buckets[0]}"
        if len(buckets) == 1
        else f"buckets {buckets[0]}-{buckets[-1]}"
        if contiguous
        else f"buckets {', '.join(map(str, buckets))}"
    )
    epochs = f", {state.epoch:.3g} epochs" if getattr(state, "epoch", None) else ""
    best = (
        f"{state.best_metric:.4f} at step {getattr(state, 'best_global_step', None)}"
        if state.best_metric is not None
        else "– (no evaluation)"
    )
    rows = [
        ("base model", f"{_link(base)}{revision}, loaded in {loaded}"),
        ("dataset", data_line),
        ("train split", f"`{dataset_record.get('train_split')}`: {dataset_record.get('train_rows'):,} rows"),
        (
            "eval split",
            f"`{dataset_record.get('eval_split')}`, {bucket_text}: {_eval_rows(dataset_record)}"
            if dataset_record.get("eval_split")
            else "none",
        ),
        (
            "LoRA",
            f"r={recipe.get('lora_r')}, alpha={recipe.get('lora_alpha')}, dropout {recipe.get('lora_dropout')}, "
            f"on {targets}",
        ),
        (
            "optimisation",
            f"{recipe.get('optim')}, learning rate {recipe.get('learning_rate')} "
            f"({recipe.get('lr_scheduler_type')}), {recipe.get('per_device_train_batch_size')} per device "
            f"× {recipe.get('gradient_accumulation_steps')} accumulation, seed {recipe.get('seed')}",
        ),
        ("steps", f"{state.global_step} optimizer steps{epochs}"),
        ("best eval_loss", best + (" (the adapter kept)" if recipe.get("load_best_model_at_end") else "")),
    ]
    full = full_validation_result(state, bool(recipe.get("load_best_model_at_end")))
    if full:
        rows.append(
            (
                "whole validation split",
                f"{dataset_record.get('full_eval_rows', 0):,} rows, once at the end, "
                f"the adapter of step {full['adapter_step']}: loss {full['loss']:.4f}, perplexity "
                f"{full['perplexity']:.4g}",
            )
        )
    if command:
        rows.append(("command", f"`{command}`"))
    table = "\n".join(["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)])
    rank = next((r for r in VLLM_LORA_RANKS if r >= (recipe.get("lora_r") or 0)), VLLM_LORA_RANKS[-1])
    return f"""---
{header.to_yaml()}
---

# {name}

A LoRA adapter for {_link(base)}, trained with paraphrx (TRL `SFTTrainer`) on the paraphrases
of split `{dataset_record.get("train_split")}` of {_link(dataset, "datasets/")}: paraphrase-robustness data, one
instruction phrased many ways, so that the model answers the same however a request is phrased.

## Training

{table}

Every value the run used is in `recipe.yaml` (`python train_sft.py recipe.yaml` reruns it), the data it read in
`dataset.json`, every logged loss in `trainer_state.json`.

## Use it

Format prompts as in training, like the dataset's `prompt` column (the dataset card names the template).

With PEFT, which loads the base model the adapter names and applies the adapter:

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{location}", dtype="bfloat16", device_map="auto")
tokenizer = AutoTokenizer.from_pretrained("{location}")
prompt = "..."  # formatted like the training rows' `prompt` column
inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=256, do_sample=False)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

The adapter trained on the base in {precision}; bf16 as above is the usual way to serve it (for the training numerics,
load the base with the same `BitsAndBytesConfig`). `model.merge_and_unload()` folds it into the weights.

With vLLM, as a LoRA module served beside its base:

```bash
vllm serve {base} --enable-lora --max-lora-rank {rank} --lora-modules {name}={location}
curl http://localhost:8000/v1/completions -H "Content-Type: application/json" \\
    -d '{{"model": "{name}", "prompt": "...", "max_tokens": 256, "temperature": 0}}'
```

## Framework versions

{_versions()}
"""
