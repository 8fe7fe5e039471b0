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
