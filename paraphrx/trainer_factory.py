"""Trainer construction, in one place: TRL's SFTTrainer with the LoRA config, our callbacks and extra metrics.

Loss masking is SFTTrainer's own: prompt/completion rows get `completion_only_loss`, so `<bos>` and every prompt
token are -100 and the completion plus the `<eos>` TRL appends train (tests/test_label_mask.py checks it per token).
"""

from __future__ import annotations

import torch
from loguru import logger
from trl import SFTTrainer, get_peft_config

from paraphrx.callbacks import add_run_metrics, build_callbacks
from paraphrx.completion_positions import POSITIONS, TARGETS, LabelPositionsCollator, add_position_lm_head
from paraphrx.fast_path import (
    adapt_training_args,
    compile_decoder_layers,
    fast_path_enabled,
    keep_packed_masks_on_device,
    truncate_tokenized,
)
from paraphrx.module_walks import cache_module_walks
from paraphrx.resume import ResumableTrainerMixin


class ParaphrxSFTTrainer(ResumableTrainerMixin, SFTTrainer):
    """SFTTrainer whose logs also carry perplexity and peak memory, so every reporter and trainer_state sees them."""

    # Set by build_trainer on the fast path: per-step metrics stay on the GPU until a log step (see compute_loss),
    # and the LM head scores the positions the collator found (paraphrx/completion_positions.py).
    metrics_on_device = False
    position_lm_head = False
    trainable_parameters: list | None = None  # set with metrics_on_device: clip over these (module_walks.py)
    _counted_parameters: int | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's training loss and metrics (entropy, token accuracy, tokens seen), kept on the device.

        TRL 1.16 turns five per-step scalars into Python numbers (`.item()`, `if num_valid > 0`), and each one makes
        the host wait for the GPU to finish the forward before it may queue the backward. Here the same quantities
        are appended as tensors and read once per log step; any case this does not cover goes to TRL. The trained
        positions come from the collator (`keep_steps_on_device`), so TRL's boolean index, four more waits, goes too."""
        positions = {key: inputs.pop(key) for key in (POSITIONS, TARGETS) if key in inputs}  # LabelPositionsCollator
        plain = (self.metrics_on_device and model.training and not return_outputs and self.compute_loss_func is None
                 and self.label_smoother is None and not self.aux_loss_enabled and self.args.loss_type == "nll"
                 and "position_ids" in inputs and "attention_mask" not in inputs)
        if not plain:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        if self.position_lm_head and positions:  # the trained positions come from the host: no boolean index
            outputs = model(**inputs, **positions, fused_lm_head=True)
            label_count = torch.full((), positions[POSITIONS].numel(), device=outputs.log_probs.device)
        else:
            outputs = model(**inputs, fused_lm_head=True)
            label_count = outputs.label_mask.sum()
        num_tokens = label_count if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        gather = self.accelerator.gather_for_metrics
        # Both sums are zero on ignored positions, so a batch with no trained token gives 0 / 1 = 0, as TRL logs it.
        valid = gather(label_count).sum().clamp(min=1)
        metrics = self._metrics["train"]
        metrics["entropy"].append(gather(outputs.entropy.detach().sum()).sum() / valid)
        metrics["mean_token_accuracy"].append(gather(outputs.is_top1.sum()).sum() / valid)
        # padding-free: every position but the pad_to_multiple_of tail is a real token; gathered because ranks'
        # batches differ in length. Counted on the device: a host number would be a blocking copy.
        local = (inputs["input_ids"] != self.data_collator.pad_token_id).sum()
        self._total_train_tokens = self._total_train_tokens + gather(local).sum() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        return loss

    def keep_steps_on_device(self) -> None:
        """Switch compute_loss to its wait-free form (metrics kept on the device, trained positions from the host)
        and list the model's modules and trainable tensors once, so that no step walks them (module_walks.py)."""
        self.metrics_on_device = True
        self.trainable_parameters = cache_module_walks(self.model)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.position_lm_head = add_position_lm_head(base)
        if self.position_lm_head:
            self.data_collator = LabelPositionsCollator(self.data_collator)

    def _clip_grad_norm(self, model):
        if self.trainable_parameters is None or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._clip_grad_norm(model)
        # the same tensors with gradients as model.parameters() holds, without walking 2,000 modules per step
        return self.accelerator.clip_grad_norm_(self.trainable_parameters, self.args.max_grad_norm)

    def floating_point_ops(self, inputs) -> int:
        """Trainer's estimate (6 x tokens x non-embedding parameters) with the parameter count taken once: Trainer
        recounts it every step, a walk over every module."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._counted_parameters is None:
            self._counted_parameters = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main_input].numel() * self._counted_parameters

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for mode_metrics in self._metrics.values():  # the device-side metrics of compute_loss, read in one go
            for key, values in mode_metrics.items():
                if values and all(isinstance(v, torch.Tensor) for v in values):
                    mode_metrics[key] = torch.stack([v.double() for v in values]).tolist()
        if isinstance(self._total_train_tokens, torch.Tensor):
            self._total_train_tokens = int(self._total_train_tokens)
        super().log(add_run_metrics(logs), start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # Under FSDP with SHARDED_STATE_DICT (accelerate_configs/fsdp_qlora.yaml) Trainer.save_model writes nothing;
        # the final adapter is gathered into one loadable file, as PEFT's FSDP-QLoRA example does. Checkpoints
        # (_internal_call) stay sharded, which is what resuming under FSDP reads.
        if self.is_fsdp_enabled and not _internal_call:
            self.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        super().save_model(output_dir, _internal_call)


def build_trainer(model, tokenizer, training_args, model_args, train_dataset, eval_dataset=None) -> SFTTrainer:
    fast = fast_path_enabled(getattr(training_args, "fast_path", "off"))
    max_length = adapt_training_args(training_args) if fast else None
    trainer = ParaphrxSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=build_callbacks(training_args),
    )
    if fast:
        trainer.train_dataset = truncate_tokenized(trainer.train_dataset, max_length)
        trainer.eval_dataset = truncate_tokenized(trainer.eval_dataset, max_length)
        compile_decoder_layers(trainer.model)
        trainer.keep_steps_on_device()
        keep_packed_masks_on_device()
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
    had already exited hung in gloo's destructor (seen in tests/test_multi_process.py)."""
    import gc

    trainer.accelerator.wait_for_everyone()
    trainer.model_wrapped = trainer.model
    trainer.accelerator.free_memory()
    gc.collect()
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish trackers, destroy the process group
        trainer.end()

