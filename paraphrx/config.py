"""The training recipe's dataclasses: TRL's ScriptArguments / SFTConfig / ModelConfig plus only what paraphrx adds.

A recipe is one flat YAML whose keys are the fields of these three classes (TRL's `TrlParser` maps each key to
its dataclass), so every TRL and transformers option works unchanged and an unknown key is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, SFTConfig

from paraphrx.fast_path import fast_path_enabled


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
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on a seeded sample of N rows (tiny demo / CI runs)."}
    )


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
            "choices": ["auto", "on", "off"],
        },
    )

    def __post_init__(self):
        if isinstance(self.fast_path, bool):  # YAML 1.1 reads a bare on/off as a boolean
            self.fast_path = "on" if self.fast_path else "off"
        if self.hub_token:  # it would be pickled into training_args.bin in every checkpoint
            raise ValueError("hub_token: give the Hub token through the HF_TOKEN environment variable, not the recipe")
        super().__post_init__()
        fast_path_enabled(self.fast_path)  # `on` without CUDA: a one-line recipe error now, not a traceback later
        # transformers' EarlyStoppingCallback would only assert this once training starts.
        if self.early_stopping_patience is not None and not (
            self.load_best_model_at_end and self.metric_for_best_model and self.eval_strategy != "no"
        ):
            raise ValueError(
                "early_stopping_patience needs eval_strategy, load_best_model_at_end: true and metric_for_best_model"
            )


# The order TrlParser parses into; train_sft.py and the label-mask view unpack in this order.
RECIPE_DATACLASSES = (ParaphrxScriptArguments, ParaphrxSFTConfig, ModelConfig)
