"""Run metrics added to every log (perplexity next to each loss, peak memory), the epochs a run covers, each log
printed once."""

import math

from transformers import ProgressCallback

from paraphrx.callbacks import (
    LoggingEarlyStoppingCallback,
    LoguruCallback,
    ProgressBarCallback,
    add_run_metrics,
    build_callbacks,
    epochs_covered,
)
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

    args = ParaphrxSFTConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to=[],
        eval_strategy="steps",
        save_strategy="steps",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        early_stopping_patience=1,
    )
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
        LoguruCallback,
        CheckpointMarkerCallback,
        RunTotalsCallback,
    ]
    args = ParaphrxSFTConfig(
        **common,
        eval_strategy="steps",
        save_strategy="steps",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        early_stopping_patience=2,
        early_stopping_threshold=0.1,
    )
    stopper = build_callbacks(args)[-1]
    assert isinstance(stopper, LoggingEarlyStoppingCallback)
    assert (stopper.early_stopping_patience, stopper.early_stopping_threshold) == (2, 0.1)


def test_epochs_are_those_the_run_covers():
    """`training: 5 optimizer steps, 3.0 epochs` was num_train_epochs, which max_steps overrides."""
    assert epochs_covered(10, range(16), 1) == 0.625  # 16 batches of 4 rows: 16 steps an epoch
    assert epochs_covered(10, range(17), 4) == 2.0  # 17 batches, 4 per step: 5 steps an epoch (the last one short)
    assert epochs_covered(10, iter(range(3)), 1) is None  # no length: not claimed


def test_each_log_is_printed_once(capsys):
    """transformers' progress bar printed every log dict beside the run's loguru line; the bar stays, the print goes."""
    from transformers import TrainerControl, TrainerState

    state = TrainerState(is_world_process_zero=True, max_steps=2)
    args = ParaphrxSFTConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[])
    bar = ProgressBarCallback()
    bar.on_train_begin(args, state, TrainerControl())
    bar.on_log(args, state, TrainerControl(), logs={"loss": 1.5})
    bar.on_train_end(args, state, TrainerControl())
    captured = capsys.readouterr()
    assert "'loss'" not in captured.err + captured.out
    plain = ProgressCallback()  # the control: transformers' own bar prints it
    plain.on_train_begin(args, state, TrainerControl())
    plain.on_log(args, state, TrainerControl(), logs={"loss": 1.5})
    plain.on_train_end(args, state, TrainerControl())
    captured = capsys.readouterr()
    assert "'loss'" in captured.err + captured.out
