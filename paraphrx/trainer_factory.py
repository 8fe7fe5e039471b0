"""Trainer construction, in one place: TRL's SFTTrainer with the LoRA config, our callbacks and extra metrics, and
on the fast path its listed changes (fast_path.py).

Loss masking is SFTTrainer's own: prompt/completion rows get `completion_only_loss`, so `<bos>` and every prompt
token are -100 and the completion plus the `<eos>` TRL appends train (tests/paraphrx/test_label_mask.py checks it per
token).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack

from datasets import Dataset
from loguru import logger
from trl import SFTTrainer, get_peft_config

from paraphrx import fast_path
from paraphrx.callbacks import add_run_metrics, build_callbacks, log_each_step_once
from paraphrx.resume import ResumableTrainerMixin
from paraphrx.run_outputs import sort_adapter_config
from paraphrx.token_reuse import TokenReuse


class ParaphrxSFTTrainer(ResumableTrainerMixin, TokenReuse, SFTTrainer):
    """SFTTrainer as a paraphrx run reports and saves: every log (and so trainer_state.json and every `report_to`)
    also carries perplexity and peak memory, a resumed run ends as the uninterrupted one would (resume.py), the
    final save under FSDP writes one loadable adapter, and rows tokenized by an earlier run are not tokenized again
    (token_reuse.py, given `token_supersets`). It holds no
    speed code: the fast path's changes are applied to an instance from outside (fast_path.CHANGES) and undone
    when the run ends."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(add_run_metrics(logs), start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # Under FSDP with SHARDED_STATE_DICT (accelerate_configs/fsdp_qlora.yaml) Trainer.save_model writes nothing;
        # the final adapter is gathered into one loadable file, as PEFT's FSDP-QLoRA example does. Checkpoints
        # (_internal_call) stay sharded, which is what resuming under FSDP reads.
        if self.is_fsdp_enabled and not _internal_call:
            self.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        super().save_model(output_dir, _internal_call)
        if self.is_world_process_zero():  # checkpoints and the final adapter alike
            sort_adapter_config(output_dir or self.args.output_dir)


def build_trainer(
    model,
    tokenizer,
    training_args,
    model_args,
    train_dataset,
    eval_dataset=None,
    undo: ExitStack | None = None,
    token_supersets: Mapping[str, Dataset] | None = None,
) -> SFTTrainer:
    """The run's trainer. When the recipe resolved to the fast path (`training_args.use_fast_path`), the fast path's
    changes go to the arguments before SFTTrainer reads them and to the built trainer after, each registered on
    `undo`, the run's ExitStack (train_sft.main closes it when the run ends). `token_supersets`
    (training_data.load_token_supersets) lets the rows be taken from splits tokenized once for every run."""
    fast = training_args.use_fast_path
    if fast and undo is None:
        raise ValueError("build_trainer: the fast path's changes need the run's ExitStack (undo) to be undone")
    recipe_args = fast_path.change_arguments(training_args, undo) if fast else training_args
    trainer = ParaphrxSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=build_callbacks(training_args),
        token_supersets=token_supersets,
    )
    log_each_step_once(trainer)
    if fast:
        fast_path.change_trainer(trainer, recipe_args, undo)
    trainable, total = count_parameters(trainer.model)
    logger.info("trainable parameters: {:,} of {:,} ({:.3%})", trainable, total, trainable / max(total, 1))
    return trainer


def count_parameters(model) -> tuple[int, int]:
    """(trainable, all) parameters; PEFT's count knows that a 4-bit weight packs two values per stored element."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def end_run(trainer) -> None:
    """Tear down in an order that cannot hang: every rank drops its DDP wrapper (whose reducer holds the gloo/NCCL
    group) while all ranks are still alive, then the group is destroyed. Freed the other way round, a rank whose peer
    had already exited hung in gloo's destructor (seen in tests/scripts/test_train_sft_multi_process.py)."""
    import gc

    trainer.accelerator.wait_for_everyone()
    trainer.model_wrapped = trainer.model
    trainer.accelerator.free_memory()
    gc.collect()
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish trackers, destroy the process group
        trainer.end()
