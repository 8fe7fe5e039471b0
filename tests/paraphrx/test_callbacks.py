"""Run metrics added to every log: perplexity next to each loss, peak memory."""

import math

from paraphrx.callbacks import LoggingEarlyStoppingCallback, LoguruCallback, add_run_metrics, build_callbacks
from paraphrx.checkpoints import CheckpointMarkerCallback
from paraphrx.config import ParaphrxSFTConfig
from paraphrx.resume import RunTotalsCallback


def test_perplexity_is_exp_of_each_loss_and_memory_is_reported():
    logs = add_run_metrics({"loss": 2.0, "learning_rate": 1e-4})
    assert math.isclose(logs["perplexity"], math.exp(2.0)) and "eval_perplexity" not in logs
    assert logs["cpu_max_rss_gib"] > 0 or logs.get("gpu_max_allocated_gib", -1) >= 0
    evals = add_run_metrics({"eval_loss": 0.5})
    assert math.isclose(evals["eval_perplexity"], math.exp(0.5)) and "perplexity" not in evals


def test_the_end_of_run_full_validation_loss_gets_its_perplexity():
    logs = add_run_metrics({"eval_full_loss": 1.5})
    assert math.isclose(logs["eval_full_perplexity"], math.exp(1.5)) and "eval_perplexity" not in logs


def test_early_stopping_ignores_the_end_of_run_evaluation(tmp_path):
    from loguru import logger
    from transformers import TrainerControl, TrainerState

    args = ParaphrxSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], eval_strategy="steps",
                             save_strategy="steps", load_best_model_at_end=True, metric_for_best_model="eval_loss",
                             early_stopping_patience=1)
    stopper, state, control = build_callbacks(args)[-1], TrainerState(), TrainerControl()
    lines = []
    sink = logger.add(lines.append, format="{message}")
    try:
        stopper.on_evaluate(args, state, control, metrics={"eval_loss": 2.0})
        state.best_metric = 2.0
        stopper.on_evaluate(args, state, control, metrics={"eval_loss": 2.5})
        assert stopper.early_stopping_patience_counter == 1 and control.should_training_stop
        stopper.on_evaluate(args, state, control, metrics={"eval_full_loss": 9.0})
    finally:
        logger.remove(sink)
    assert sum("early stopping at step" in line for line in lines) == 1  # said once, not again for eval_full


def test_huge_loss_does_not_overflow():
    assert math.isfinite(add_run_metrics({"loss": 1e6})["perplexity"])


def test_early_stopping_callback_only_when_patience_is_set(tmp_path):
    common = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[])
    assert [type(c) for c in build_callbacks(ParaphrxSFTConfig(**common))] == [
        LoguruCallback, CheckpointMarkerCallback, RunTotalsCallback]
    args = ParaphrxSFTConfig(**common, eval_strategy="steps", save_strategy="steps", load_best_model_at_end=True,
                             metric_for_best_model="eval_loss", early_stopping_patience=2, early_stopping_threshold=0.1)
    stopper = build_callbacks(args)[-1]
    assert isinstance(stopper, LoggingEarlyStoppingCallback)
    assert (stopper.early_stopping_patience, stopper.early_stopping_threshold) == (2, 0.1)
