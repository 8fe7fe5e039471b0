"""The fast path's trainer changes that a CPU can run (device-side loss metrics, module walks listed once, trained
positions from the collator) log exactly what TRL's own compute_loss logs, without per-step reads."""

from contextlib import ExitStack

import pytest
import torch
from transformers import TrainerCallback

from paraphrx.completion_positions import LabelPositionsCollator, score_collated_positions
from paraphrx.dataset_io import load_prepared
from paraphrx.device_loss import keep_loss_metrics_on_device
from paraphrx.library_internals import step_metrics
from paraphrx.modeling import load_model_and_tokenizer
from paraphrx.module_walks import list_module_walks_once
from paraphrx.recipe_cli import parse_recipe
from paraphrx.trainer_factory import build_trainer
from tests.conftest import NO_EVALUATION, tiny_recipe

TINY = tiny_recipe()
LOGGED = ("loss", "entropy", "mean_token_accuracy", "num_tokens", "grad_norm")


class _MetricTypes(TrainerCallback):
    """What the trainer holds in `_metrics` between a step's end and its log (the window where TRL has floats)."""

    def __init__(self):
        self.trainer, self.seen = None, []

    def on_step_end(self, args, state, control, **kwargs):
        held = step_metrics(self.trainer)["train"]
        self.seen.append({key: type(values[-1]) for key, values in held.items() if values})


def _train(tiny_model_dir, prepared_dataset_dir, out, on_device: bool, pad_to_multiple_of: int | None = None):
    script_args, training_args, model_args = parse_recipe(
        [
            TINY,
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            *NO_EVALUATION,
            "--save_strategy",
            "no",
            "--lora_dropout",
            "0.0",
            "--logging_steps",
            "1",
        ]
    )
    # the fast path's batch shape, on the CPU: one padding-free batch, no length cap in TRL
    training_args.padding_free, training_args.max_length, training_args.gradient_checkpointing = True, None, False
    training_args.pad_to_multiple_of = pad_to_multiple_of
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    rows = load_prepared(str(prepared_dataset_dir), "bucket1").select(range(12))
    trainer = build_trainer(model, tokenizer, training_args, model_args, rows)
    types = _MetricTypes()
    types.trainer = trainer
    trainer.add_callback(types)
    collate, types.widths, types.positions = trainer.data_collator.torch_call, [], []

    def recording_collate(examples):
        batch = collate(examples)
        types.widths.append((batch["input_ids"].shape[1], sum(len(e["input_ids"]) for e in examples)))
        return batch

    trainer.data_collator.torch_call = recording_collate
    with ExitStack() as undo:
        if on_device:  # what build_trainer does on the GPU fast path, where a CPU can follow
            undo.enter_context(keep_loss_metrics_on_device(trainer))
            undo.enter_context(list_module_walks_once(trainer))
            assert undo.enter_context(score_collated_positions(trainer))

            class RecordingPositions(LabelPositionsCollator):
                def __call__(self, examples):
                    batch = super().__call__(examples)
                    types.positions.append(len(batch["label_positions"]))
                    return batch

            trainer.data_collator = RecordingPositions(trainer.data_collator.collator)
        trainer.train()
        types.walks_listed = "zero_grad" in vars(trainer.model)
    types.total_flos, types.model = trainer.state.total_flos, trainer.model
    logs = [{k: entry[k] for k in LOGGED} for entry in trainer.state.log_history if "loss" in entry]
    return logs, types


@pytest.fixture(scope="module")
def runs(tiny_model_dir, prepared_dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("metrics")
    return (
        _train(tiny_model_dir, prepared_dataset_dir, out / "trl", on_device=False),
        _train(tiny_model_dir, prepared_dataset_dir, out / "device", on_device=True),
        _train(tiny_model_dir, prepared_dataset_dir, out / "padded", on_device=True, pad_to_multiple_of=64),
    )


def test_device_side_metrics_log_the_same_values_as_trl(runs):
    (trl_logs, _), (device_logs, _), _ = runs
    assert len(trl_logs) == len(device_logs) == 3
    for trl, ours in zip(trl_logs, device_logs):
        assert ours["num_tokens"] == trl["num_tokens"] > 0
        for key in ("loss", "entropy", "mean_token_accuracy"):
            assert ours[key] == pytest.approx(trl[key], rel=1e-5, abs=1e-6), key
        # TRL casts the LoRA tensors to bf16 under a 4-bit base, so the norm of their gradients is a bf16 number:
        # the LM head's fp32 sums in another order (paraphrx/lm_head.py) may move it by one bf16 step (2^-7)
        assert ours["grad_norm"] == pytest.approx(trl["grad_norm"], rel=2**-7)
        assert isinstance(ours["entropy"], float) and isinstance(ours["num_tokens"], (int, float))
    assert device_logs[0]["loss"] > 1.0 and device_logs[0]["entropy"] > 0.0  # real figures, not zeros


def test_device_run_scored_the_collators_positions(runs):
    """The device-side runs took the wait-free LM head: every batch carried its trained positions from the host."""
    _, (device_logs, device_seen), (_, padded_seen) = runs
    assert len(device_seen.positions) == len(padded_seen.positions) == 3
    assert device_seen.positions == padded_seen.positions  # the pad tail adds no trained position
    assert all(n > 0 for n in device_seen.positions)


def test_device_run_walks_no_module_per_step_and_counts_the_same_flops(runs):
    """Clipping (grad_norm above), zero_grad, train() and the FLOP count went through lists made once, with the
    same results as Trainer's per-step walks in the TRL run."""
    (_, trl_seen), (_, device_seen), _ = runs
    assert device_seen.total_flos == trl_seen.total_flos > 0
    assert device_seen.walks_listed and not trl_seen.walks_listed
    assert "zero_grad" not in vars(device_seen.model)  # undone when the run's stack closed
    assert all(p.grad is None for p in device_seen.model.parameters())  # the last step's zero_grad cleared them


def test_metrics_stay_tensors_until_the_log_step(runs):
    (_, trl_types), (_, device_types), _ = runs
    trl_types, device_types = trl_types.seen, device_types.seen
    assert trl_types and all(t["entropy"] is float for t in trl_types)  # TRL read them on the host every step
    assert device_types and all(
        t["entropy"] is torch.Tensor and t["mean_token_accuracy"] is torch.Tensor and t["num_tokens"] is torch.Tensor
        for t in device_types
    )


def test_pad_to_multiple_of_tail_changes_no_logged_value(runs):
    """TRL's pad_to_multiple_of adds a tail of pad positions to the packed batch (here to a multiple of 64, as users
    set it for fixed shapes). The tail lies outside every sample and has no loss, so loss, metrics and gradients
    stay those of the unpadded batch, and num_tokens counts only real tokens (TRL's own count includes the tail)."""
    (trl_logs, trl_seen), (device_logs, device_seen), (padded_logs, padded_seen) = runs
    assert all(width % 64 == 0 for width, _ in padded_seen.widths)
    assert any(width > real for width, real in padded_seen.widths)  # a tail was really added
    assert all(width == real for width, real in trl_seen.widths + device_seen.widths)
    for trl, unpadded, padded in zip(trl_logs, device_logs, padded_logs, strict=True):
        assert padded["num_tokens"] == unpadded["num_tokens"] == trl["num_tokens"]
        for key in ("loss", "entropy", "mean_token_accuracy", "grad_norm"):
            assert padded[key] == pytest.approx(unpadded[key], rel=1e-5, abs=1e-6), key
