"""ParaphrxSFTTrainer's device-side metrics log exactly what TRL's own compute_loss logs, without per-step reads."""

from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from paraphrx.dataset_io import load_prepared
from paraphrx.modeling import load_model_and_tokenizer
from paraphrx.recipe_cli import parse_recipe
from paraphrx.trainer_factory import build_trainer

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "recipes" / "tiny" / "bucket1.yaml")
LOGGED = ("loss", "entropy", "mean_token_accuracy", "num_tokens", "grad_norm")


class _MetricTypes(TrainerCallback):
    """What the trainer holds in `_metrics` between a step's end and its log (the window where TRL has floats)."""

    def __init__(self):
        self.trainer, self.seen = None, []

    def on_step_end(self, args, state, control, **kwargs):
        held = self.trainer._metrics["train"]
        self.seen.append({key: type(values[-1]) for key, values in held.items() if values})


def _train(tiny_model_dir, prepared_dataset_dir, out, on_device: bool):
    script_args, training_args, model_args = parse_recipe([
        TINY, "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "3",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
        "--early_stopping_patience", "None", "--lora_dropout", "0.0", "--logging_steps", "1",
    ])
    # the fast path's batch shape, on the CPU: one padding-free batch, no length cap in TRL
    training_args.padding_free, training_args.max_length, training_args.gradient_checkpointing = True, None, False
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    rows = load_prepared(str(prepared_dataset_dir), "bucket1").select(range(12))
    trainer = build_trainer(model, tokenizer, training_args, model_args, rows)
    trainer.metrics_on_device = on_device
    types = _MetricTypes()
    types.trainer = trainer
    trainer.add_callback(types)
    trainer.train()
    logs = [{k: entry[k] for k in LOGGED} for entry in trainer.state.log_history if "loss" in entry]
    return logs, types.seen


@pytest.fixture(scope="module")
def both_runs(tiny_model_dir, prepared_dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("metrics")
    return (_train(tiny_model_dir, prepared_dataset_dir, out / "trl", on_device=False),
            _train(tiny_model_dir, prepared_dataset_dir, out / "device", on_device=True))


def test_device_side_metrics_log_the_same_values_as_trl(both_runs):
    (trl_logs, _), (device_logs, _) = both_runs
    assert len(trl_logs) == len(device_logs) == 3
    for trl, ours in zip(trl_logs, device_logs):
        assert ours["num_tokens"] == trl["num_tokens"] > 0
        for key in ("loss", "entropy", "mean_token_accuracy", "grad_norm"):
            assert ours[key] == pytest.approx(trl[key], rel=1e-5, abs=1e-6), key
        assert isinstance(ours["entropy"], float) and isinstance(ours["num_tokens"], (int, float))
    assert device_logs[0]["loss"] > 1.0 and device_logs[0]["entropy"] > 0.0  # real figures, not zeros


def test_metrics_stay_tensors_until_the_log_step(both_runs):
    (_, trl_types), (_, device_types) = both_runs
    assert trl_types and all(t["entropy"] is float for t in trl_types)  # TRL read them on the host every step
    assert device_types and all(
        t["entropy"] is torch.Tensor and t["mean_token_accuracy"] is torch.Tensor and t["num_tokens"] is torch.Tensor
        for t in device_types
    )
