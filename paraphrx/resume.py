"""A killed-and-resumed run ends as the uninterrupted one would: same last step, adapter tensors and figures.

Three things do not survive a plain transformers/TRL/PEFT resume, and are carried across here:
- callback state, e.g. early stopping's patience counter: transformers saves it in the checkpoint's
  trainer_state.json but restores it only with `restore_callback_states_from_checkpoint`, which paraphrx's
  config turns on by default (without it a run that stops at step 25 ran to 35 after a resume);
- the run's totals: Trainer's `train_loss` averages only the steps of the current `train()` call, and TRL counts
  `num_tokens` from zero again. `RunTotalsCallback` stores both in trainer_state.json (a stateful callback) and
  forces a log at every save, so no loss is pending unlogged when a checkpoint is written;
- the LoRA dtype: under a 4-bit base TRL casts the trainable LoRA tensors to bf16, and Trainer's resume and its
  best-adapter load at the end (`load_best_model_at_end`) both go through PEFT's `load_adapter`, whose
  `autocast_adapter_dtype=True` casts them to float32; after either load they go back to the dtype they trained in
  (bf16 -> float32 -> bf16 is exact). Left in float32, the end-of-run evaluation mixes dtypes: on the GPU path it
  recompiled every layer, and after a resume it stopped the run (`expected mat1 and mat2 to have the same dtype`).
The Trainer internals this overrides and reads are named and checked in library_internals.py.
"""

from __future__ import annotations

from contextlib import contextmanager

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from paraphrx import library_internals as internals

internals.require_resume_internals()


class RunTotalsCallback(TrainerCallback, ExportableState):
    """The run's loss sum (over `steps` optimizer steps) and TRL token count, saved in every checkpoint."""

    def __init__(self, loss_sum: float = 0.0, steps: int = 0, num_tokens: int = 0):
        self.loss_sum = self.loss_sum_at_start = float(loss_sum)
        self.steps = self.steps_at_start = int(steps)
        self.num_tokens = int(num_tokens)
        self.first_step = 0  # global_step when this train() call began

    def state(self) -> dict:
        # as `args`: transformers rebuilds a restored callback as type(cb)(**args)
        return {
            "args": {"loss_sum": self.loss_sum, "steps": self.steps, "num_tokens": self.num_tokens},
            "attributes": {},
        }

    def update(self, total_loss_this_call: float, global_step: int, num_tokens: int) -> None:
        self.loss_sum = self.loss_sum_at_start + total_loss_this_call
        self.steps = self.steps_at_start + global_step - self.first_step
        self.num_tokens = num_tokens

    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step

    def _log_before_saving(self, args, control) -> None:
        if control.should_save or (args.save_strategy == "best" and control.should_evaluate):
            control.should_log = True

    def on_step_end(self, args, state, control, **kwargs):
        self._log_before_saving(args, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._log_before_saving(args, control)


@contextmanager
def keeping_trained_dtypes(model):
    """The trainable tensors leave the block in the dtype they entered it (a checkpoint load may upcast them)."""
    trained_in = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    yield
    for name, param in model.named_parameters():
        if name in trained_in and param.dtype != trained_in[name]:
            param.data = param.data.to(trained_in[name])


class ResumableTrainerMixin:
    """Mixed into the Trainer subclass before SFTTrainer (see the module docstring)."""

    def _run_totals(self) -> RunTotalsCallback | None:
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, RunTotalsCallback)), None)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        with keeping_trained_dtypes(model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        with keeping_trained_dtypes(self.model):
            super()._load_best_model()

    def _load_callback_state(self):
        super()._load_callback_state()
        totals = self._run_totals()
        if totals is not None:
            internals.set_train_tokens(self, totals.num_tokens)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        totals = self._run_totals()
        if totals is not None:
            totals.update(internals.run_loss_total(self), self.state.global_step, int(internals.train_tokens(self)))
            if "train_loss" in logs:  # the mean over every step of the run, as an uninterrupted run reports it
                logs["train_loss"] = totals.loss_sum / max(totals.steps, 1)
        super().log(logs, start_time)

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        return output._replace(training_loss=output.metrics.get("train_loss", output.training_loss))
