"""The training recipe's dataclasses: TRL's ScriptArguments / SFTConfig / ModelConfig plus only what paraphrx adds,
and what a recipe resolves to on this machine (the fast-path decision, made once).

A recipe is one flat YAML whose keys are the fields of these three classes (TRL's `TrlParser` maps each key to
its dataclass), so every TRL and transformers option works unchanged and an unknown key is an error.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch
from loguru import logger
from trl import ModelConfig, ScriptArguments, SFTConfig, get_peft_config

from paraphrx import library_internals
from paraphrx.paths import output_folder_problem

FAST_PATH_CHOICES = ("auto", "on", "off")


def sharded_launch() -> str | None:
    """FSDP or DeepSpeed, as `accelerate launch` announces them to the training process."""
    for engine in ("FSDP", "DEEPSPEED"):
        if os.environ.get(f"ACCELERATE_USE_{engine}", "false").lower() in ("1", "true"):
            return engine
    return None


def fast_path_enabled(choice: str, use_cpu: bool = False) -> bool:
    """Resolve a recipe's `fast_path` for this process. `auto` is on exactly when a CUDA device is present and the
    recipe trains on it (not `use_cpu`), the launch is not sharded (FSDP-QLoRA and ZeRO-3 exist to shard the 4-bit base, which the fast path would dequantize) and
    this TRL / transformers / torch has every private name the fast path uses (library_internals.py; if not, one
    warning line says which); `on` refuses where `auto` would be off; `off` is off."""
    if choice not in FAST_PATH_CHOICES:
        raise ValueError(f"fast_path must be one of {FAST_PATH_CHOICES}, got {choice!r}")
    if choice == "off":
        return False
    sharded, missing = sharded_launch(), library_internals.MISSING
    if not torch.cuda.is_available():
        why, unexpected = "it needs a CUDA GPU", False
    elif use_cpu:
        why, unexpected = "the recipe trains on the CPU (use_cpu: true)", False
    elif sharded:
        why, unexpected = f"a {sharded} launch shards the 4-bit base", False
    elif missing:  # a GPU run that could be faster: worth a warning
        why, unexpected = f"this TRL/transformers/torch lacks {', '.join(missing)}", True
    else:
        return True
    if choice == "on":
        raise ValueError(f"fast_path: on is not possible here: {why}; use auto or off")
    if unexpected:
        logger.warning("fast_path: auto trains on the plain path: {}", why)
    return False


# Validation rows scored every eval_steps: 20 steps train 320 rows, so scoring 64 stays under 10% of the time between
# two evaluations once scoring a row costs less than half of training one, whatever the size of the validation split;
# its noise against the whole split: benchmarks/RESULTS.md, "the evaluation subset's noise".
EVAL_SUBSET_ROWS = 64


@dataclass
class ParaphrxScriptArguments(ScriptArguments):
    """Which prepared dataset to train on. `dataset_train_split` names the bucket range (e.g. `bucket1_4`);
    evaluation uses `dataset_test_split` (`validation`) restricted to the same buckets."""

    dataset_revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) of the prepared dataset."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a seeded sample of N rows (tiny demo / CI runs)."}
    )
    eval_subset_rows: int | None = field(
        default=EVAL_SUBSET_ROWS,
        metadata={
            "help": "Validation rows scored every eval_steps: a fixed, seeded subset, stratified by source and bucket "
            "and spread over prompts, the same in every run (paraphrx/eval_subset.py); the whole split is scored once "
            "at the end. null: the whole split every time."
        },
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Deprecated: the old name of eval_subset_rows, which it sets."}
    )

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):  # TRL 1.16's ScriptArguments has none
            super().__post_init__()
        if self.max_eval_samples is not None:
            warnings.warn(
                "max_eval_samples is deprecated: it now sets eval_subset_rows (a stratified subset)",
                FutureWarning,
                stacklevel=2,
            )
            self.eval_subset_rows, self.max_eval_samples = self.max_eval_samples, None
        if self.eval_subset_rows is not None and self.eval_subset_rows < 1:
            raise ValueError(f"eval_subset_rows: expected a number of rows >= 1 or null, got {self.eval_subset_rows}")


@dataclass
class ParaphrxSFTConfig(SFTConfig):
    """SFTConfig plus early stopping, run-folder policy and the log folder."""

    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without eval_loss improvement (None: never stop early)."},
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Minimum eval_loss improvement that resets the patience counter."}
    )
    # transformers 5 dropped TrainingArguments.overwrite_output_dir; paraphrx keeps the guard it used to give.
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in output_dir instead of refusing to start."}
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={"help": "Keep checkpoint-* folders after a successful run (default: delete, keep the adapter)."},
    )
    log_dir: str = field(default="logs", metadata={"help": "Folder for loguru log files."})
    # transformers saves callback state (early stopping's counter, the run's loss total) in every checkpoint but
    # restores it only when asked; a resumed run must end where the uninterrupted one would (paraphrx/resume.py).
    restore_callback_states_from_checkpoint: bool = field(
        default=True, metadata={"help": "Restore callback states (early stopping, run totals) when resuming."}
    )
    fast_path: str = field(
        default="auto",
        metadata={
            "help": "GPU fast path (paraphrx/fast_path.py): NF4 dequantized once, padding-free flex attention, compiled "
            "layers; same model, loss and examples per step. auto = on when CUDA is available; on; off.",
            "choices": list(FAST_PATH_CHOICES),
        },
    )
    # Not a recipe key: `fast_path` resolved for this machine, once, when the recipe is parsed.
    use_fast_path: bool = field(default=False, init=False)

    def __post_init__(self):
        if isinstance(self.fast_path, bool):  # YAML 1.1 reads a bare on/off as a boolean
            self.fast_path = "on" if self.fast_path else "off"
        if self.hub_token:  # it would be pickled into training_args.bin in every checkpoint
            raise ValueError("hub_token: give the Hub token through the HF_TOKEN environment variable, not the recipe")
        problem = output_folder_problem(self.output_dir) if self.output_dir else None
        if problem:
            raise ValueError(f"output_dir {self.output_dir}: {problem}")
        _prefer_activation_checkpointing(self)
        _check_precision_device(self)
        super().__post_init__()
        _check_report_to(self.report_to)
        if self.push_to_hub and self.hub_strategy.value not in ("every_save", "end"):
            raise ValueError(
                f"hub_strategy: {self.hub_strategy.value}: paraphrx pushes the finished run once (adapter, "
                "card and records), never checkpoints; leave hub_strategy out"
            )
        # `on` without CUDA: a one-line recipe error, now
        self.use_fast_path = fast_path_enabled(self.fast_path, use_cpu=self.use_cpu)
        # transformers' EarlyStoppingCallback would only assert this once training starts.
        if self.early_stopping_patience is not None and not (
            self.load_best_model_at_end and self.metric_for_best_model and self.eval_strategy != "no"
        ):
            raise ValueError(
                "early_stopping_patience needs eval_strategy, load_best_model_at_end: true and metric_for_best_model"
            )


def _prefer_activation_checkpointing(args) -> None:
    """transformers 5.24 renamed `gradient_checkpointing` to `activation_checkpointing` and warns (FutureWarning) when
    only the old name is set, which TRL's default (True) and the recipes do; 5.17 (the GPU image) knows only the old
    name, so the recipes keep it and the value moves to the new name here, where the field exists."""
    for old, new in (
        ("gradient_checkpointing", "activation_checkpointing"),
        ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
    ):
        if hasattr(args, new) and getattr(args, new) is None and getattr(args, old) is not None:
            setattr(args, new, getattr(args, old))


def _check_precision_device(args) -> None:
    """A GPU recipe on a machine without one: say so, and where the CPU runs are (transformers' own check says "Your
    setup doesn't support bf16/gpu")."""
    from transformers.utils import is_torch_bf16_gpu_available

    if (args.bf16 or args.bf16_full_eval) and not args.use_cpu and not is_torch_bf16_gpu_available():
        raise ValueError(
            "bf16: true trains on a CUDA GPU, and this machine has none; on the CPU run a tiny recipe "
            "(recipes/tiny/, `make train-tiny`) or add --use_cpu true --bf16 false"
        )


# report_to names whose availability check in transformers.integrations is spelled differently
_INTEGRATION_PACKAGES = {"azure_ml": "azureml", "comet_ml": "comet", "flyte": "flytekit"}


def _check_report_to(report_to: list[str]) -> None:
    """Every `report_to` integration exists and is installed (else the Trainer fails with a traceback after loading)."""
    if not report_to:
        return
    from transformers.integrations import integration_utils

    for name in report_to:
        if name not in integration_utils.INTEGRATION_TO_CALLBACK:
            raise ValueError(
                f"report_to: unknown integration {name!r} (one of none, all, "
                f"{', '.join(integration_utils.INTEGRATION_TO_CALLBACK)})"
            )
        available = getattr(integration_utils, f"is_{_INTEGRATION_PACKAGES.get(name, name)}_available", None)
        if available is not None and not available():
            extra = f'pip install -e ".[{name}]"' if name in ("wandb", "tensorboard") else f"pip install {name}"
            raise ValueError(f"report_to: {name} is not installed ({extra}), or choose report_to: none")


@dataclass
class ParaphrxModelConfig(ModelConfig):
    """TRL's ModelConfig, checked for the launch it runs under."""

    def __post_init__(self):
        super().__post_init__()
        if self.use_peft:  # peft checks its values only when the trainer is built, after the model has loaded
            if self.lora_r < 1:
                raise ValueError(f"lora_r: the LoRA rank must be at least 1, got {self.lora_r}")
            if not 0 <= self.lora_dropout < 1:
                raise ValueError(f"lora_dropout: expected a probability in [0, 1), got {self.lora_dropout}")
            try:
                get_peft_config(self)
            except (ValueError, TypeError) as err:
                raise ValueError(f"lora_*: {err}") from None
        # FSDP and ZeRO-3 flatten each wrapped block's parameters into one tensor of one dtype, so 4-bit weights must be
        # stored in the model's dtype; with bitsandbytes' default (uint8) the run fails deep inside FSDP's wrapping,
        # after the model has loaded. Say so before anything loads.
        engine = sharded_launch()
        if engine is None or not self.load_in_4bit:
            return
        wanted = self.dtype if self.dtype not in (None, "auto") else "bfloat16"
        if self.bnb_4bit_quant_storage != wanted:
            raise ValueError(
                f"bnb_4bit_quant_storage: a {engine} launch shards the 4-bit base, which needs it stored as the model's "
                f"dtype: add --bnb_4bit_quant_storage {wanted} (got {self.bnb_4bit_quant_storage or 'the default uint8'})"
            )


# The order TrlParser parses into; train_sft.py and the label-mask view unpack in this order.
RECIPE_DATACLASSES = (ParaphrxScriptArguments, ParaphrxSFTConfig, ParaphrxModelConfig)
