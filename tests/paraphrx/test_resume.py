"""What carries a run across a resume: the run totals' state, the log forced before each save, the private names."""

from types import SimpleNamespace

from transformers import TrainerControl
from trl import SFTTrainer

from paraphrx.resume import ResumableTrainerMixin, RunTotalsCallback


def test_run_totals_round_trip_through_the_saved_state():
    totals = RunTotalsCallback()
    totals.on_train_begin(None, SimpleNamespace(global_step=0), None)
    totals.update(total_loss_this_call=12.5, global_step=5, num_tokens=900)
    state = totals.state()
    restored = RunTotalsCallback(**state["args"])  # what transformers' _load_callback_state does
    restored.on_train_begin(None, SimpleNamespace(global_step=5), None)
    restored.update(total_loss_this_call=7.5, global_step=8, num_tokens=1500)
    assert (restored.loss_sum, restored.steps, restored.num_tokens) == (20.0, 8, 1500)


def test_without_restored_totals_a_resumed_call_reports_its_own_steps_only():
    """`restore_callback_states_from_checkpoint: false`: the mean stays a true mean, over this call's steps."""
    totals = RunTotalsCallback()
    totals.on_train_begin(None, SimpleNamespace(global_step=5), None)
    totals.update(total_loss_this_call=7.5, global_step=8, num_tokens=0)
    assert (totals.loss_sum, totals.steps) == (7.5, 3)


def test_a_log_is_forced_whenever_a_checkpoint_will_be_saved():
    args = SimpleNamespace(save_strategy="steps")
    for should_save, expected in ((True, True), (False, False)):
        control = TrainerControl(should_save=should_save)
        RunTotalsCallback().on_step_end(args, None, control)
        assert control.should_log is expected
    control = TrainerControl(should_evaluate=True)  # save_strategy best decides after the evaluation
    RunTotalsCallback().on_epoch_end(SimpleNamespace(save_strategy="best"), None, control)
    assert control.should_log


def test_the_mixin_overrides_sit_before_transformers_in_the_trainer():
    from paraphrx.trainer_factory import ParaphrxSFTTrainer

    mro = ParaphrxSFTTrainer.__mro__
    assert mro.index(ResumableTrainerMixin) < mro.index(SFTTrainer)
    for name in ("_load_from_checkpoint", "_load_best_model", "_load_callback_state", "log", "train"):
        assert getattr(ParaphrxSFTTrainer, name).__qualname__.split(".")[0] in (
            "ResumableTrainerMixin",
            "ParaphrxSFTTrainer",
        )


def test_a_checkpoint_load_leaves_the_trainable_tensors_in_the_dtype_they_trained_in():
    """PEFT's load_adapter upcasts LoRA to float32 (autocast_adapter_dtype); the frozen weights are left alone."""
    import torch

    from paraphrx.resume import keeping_trained_dtypes

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
    model[1].requires_grad_(False)
    bits = model[0].weight.detach().clone()
    with keeping_trained_dtypes(model):
        for param in model.parameters():  # what load_adapter does to every tensor it loads
            param.data = param.data.float()
    assert model[0].weight.dtype == model[0].bias.dtype == torch.bfloat16
    assert torch.equal(model[0].weight, bits), "bf16 -> float32 -> bf16 is exact"
    assert model[1].weight.dtype == torch.float32, "only what trains is restored"
