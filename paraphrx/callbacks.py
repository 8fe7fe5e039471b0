"""What a run reports besides the loss: perplexity, peak memory, loguru lines, early stopping that says so, and the
loss on the whole validation split at the end."""

from __future__ import annotations

import math
import resource
import sys

import torch
from loguru import logger
from transformers import EarlyStoppingCallback, PrinterCallback, ProgressCallback, TrainerCallback

from paraphrx.checkpoints import CheckpointMarkerCallback
from paraphrx.resume import RunTotalsCallback

# Metric prefix of the end-of-run evaluation on the whole validation split: eval_full_loss, eval_full_perplexity.
FULL_EVAL_PREFIX = "eval_full"


def peak_memory_metrics() -> dict[str, float]:
    """Peak GPU memory allocated by torch on CUDA; peak resident set size of this process on the CPU."""
    if torch.cuda.is_available():
        return {"gpu_max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes
    return {"cpu_max_rss_gib": round(rss_bytes / 2**30, 3)}


def add_run_metrics(logs: dict[str, float]) -> dict[str, float]:
    """Add perplexity = exp(loss) next to every (eval) loss and the peak memory, in place, before logs are reported."""
    for loss_key, ppl_key in (
        ("loss", "perplexity"),
        ("eval_loss", "eval_perplexity"),
        (f"{FULL_EVAL_PREFIX}_loss", f"{FULL_EVAL_PREFIX}_perplexity"),
    ):
        if loss_key in logs:
            logs[ppl_key] = math.exp(min(logs[loss_key], 700.0))  # exp overflows float past ~709
    logs.update(peak_memory_metrics())
    return logs


def _format(logs: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())


def epochs_covered(max_steps: int, train_dataloader, gradient_accumulation_steps: int) -> float | None:
    """How many passes over the training rows `max_steps` optimizer steps make (Trainer's steps per epoch: batches
    over accumulation, rounded up); None for a dataloader without a length."""
    try:
        batches = len(train_dataloader)
    except TypeError:
        return None
    per_epoch = max(batches // gradient_accumulation_steps + int(batches % gradient_accumulation_steps > 0), 1)
    return max_steps / per_epoch


class LoguruCallback(TrainerCallback):
    """Every Trainer log (loss, eval loss, perplexity, learning rate, memory) as one loguru line on the main process."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if state.is_world_process_zero:
            # the epochs the run covers, not `num_train_epochs` (which max_steps overrides)
            epochs = epochs_covered(state.max_steps, train_dataloader, args.gradient_accumulation_steps)
            logger.info(
                "training: {} optimizer steps{}", state.max_steps, "" if epochs is None else f", {epochs:.3g} epochs"
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            logger.info("step {}/{} | {}", state.global_step, state.max_steps, _format(logs))

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            logger.info("checkpoint saved at step {}", state.global_step)


class ProgressBarCallback(ProgressCallback):
    """transformers' progress bar without its print of every log, which LoguruCallback already writes as one line."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class LoggingEarlyStoppingCallback(EarlyStoppingCallback):
    """transformers' EarlyStoppingCallback, plus a log line when it stops the run."""

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        if f"{FULL_EVAL_PREFIX}_loss" in metrics:
            return  # the end-of-run evaluation on the whole split: not part of the schedule
        super().on_evaluate(args, state, control, metrics, **kwargs)
        stopped = self.early_stopping_patience_counter >= self.early_stopping_patience
        if stopped and state.is_world_process_zero:
            logger.info(
                "early stopping at step {}: {} did not improve for {} evaluations (best {:.4g})",
                state.global_step,
                args.metric_for_best_model,
                self.early_stopping_patience,
                state.best_metric,
            )


def build_callbacks(training_args) -> list[TrainerCallback]:
    # a checkpoint is marked verified after every save; the run's totals travel in it (paraphrx/resume.py)
    callbacks: list[TrainerCallback] = [LoguruCallback(), CheckpointMarkerCallback(), RunTotalsCallback()]
    if training_args.early_stopping_patience is not None:
        callbacks.append(
            LoggingEarlyStoppingCallback(
                early_stopping_patience=training_args.early_stopping_patience,
                early_stopping_threshold=training_args.early_stopping_threshold,
            )
        )
    return callbacks


def log_each_step_once(trainer) -> None:
    """Trainer prints every log itself (its progress bar's `on_log`, or PrinterCallback with `disable_tqdm`); the run's
    loguru line is the one record, so the bar stays and its print goes."""
    trainer.pop_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ProgressBarCallback)


def evaluate_full_validation(trainer, validation) -> dict | None:
    """Score the adapter the run keeps (the best by `eval_loss` with `load_best_model_at_end`) on the whole validation
    split of its buckets, once, after training: `eval_full_loss` and `eval_full_perplexity` in the Trainer's log
    history and the log file. Call on every process; None when the run does not evaluate."""
    if validation is None:
        return None
    metrics = trainer.evaluate(eval_dataset=validation, metric_key_prefix=FULL_EVAL_PREFIX)
    logger.info(
        "loss on the whole validation split ({} rows): {:.4f}, perplexity {:.4g}",
        len(validation),
        metrics[f"{FULL_EVAL_PREFIX}_loss"],
        metrics[f"{FULL_EVAL_PREFIX}_perplexity"],
    )
    return metrics


def full_validation_result(state, load_best_model_at_end: bool = False) -> dict | None:
    """The end-of-run loss on the whole validation split (`evaluate_full_validation`), if any, and the step whose
    adapter it scored: the kept one."""
    history = getattr(state, "log_history", [])
    logged = next((h for h in reversed(history) if f"{FULL_EVAL_PREFIX}_loss" in h), None)
    if logged is None:
        return None
    best = state.best_global_step if load_best_model_at_end else None
    return {
        "loss": logged[f"{FULL_EVAL_PREFIX}_loss"],
        "perplexity": logged.get(f"{FULL_EVAL_PREFIX}_perplexity"),
        "adapter_step": best or state.global_step,
    }
