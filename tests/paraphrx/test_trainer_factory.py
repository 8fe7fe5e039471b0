"""build_trainer: SFTTrainer as the recipe asks and, on the fast path, every listed change applied around its
construction and undone when the run's stack closes (on the CPU, where the fast path is applied here by hand)."""

from contextlib import ExitStack

from paraphrx.completion_positions import LabelPositionsCollator
from paraphrx.dataset_io import load_prepared
from paraphrx.fast_path import decoder_layers
from paraphrx.modeling import load_model_and_tokenizer
from paraphrx.recipe_cli import parse_recipe
from paraphrx.trainer_factory import ParaphrxSFTTrainer, build_trainer
from tests.conftest import tiny_recipe


def _fast_path_state_of_process() -> dict:
    """The process-wide settings the fast path changes: transformers' packed-sequence check, dynamo's limit."""
    import torch._dynamo
    from transformers import masking_utils

    return {"masking": masking_utils.find_packed_sequence_indices,
            "recompile_limit": torch._dynamo.config.recompile_limit}


def _fast_path_state(trainer) -> dict:
    """What the fast path's changes touch on a trainer, its model and the process."""
    base = trainer.model.get_base_model()
    layers = decoder_layers(trainer.model)
    return {
        "args": dict(vars(trainer.args)),
        "trainer": {name: name in vars(trainer) for name in ("compute_loss", "log", "_clip_grad_norm",
                                                             "floating_point_ops")},
        "collator": trainer.data_collator,
        "datasets": (trainer.train_dataset, trainer.eval_dataset),
        "model": {name: name in vars(trainer.model) for name in ("train", "zero_grad")},
        "base_forward": base.forward,
        "layers": [(vars(layer).get("forward"), vars(layer).get("_compiled_call_impl")) for layer in layers],
        **_fast_path_state_of_process(),
    }


def test_build_trainer_applies_every_change_and_the_run_undoes_them(tiny_model_dir, prepared_dataset_dir, tmp_path):
    """The CPU has no fast path, so its changes are applied here by hand (nothing is compiled until a forward runs):
    build_trainer applies each listed change, and closing the run's stack puts every one back."""
    script_args, training_args, model_args = parse_recipe([
        tiny_recipe(), "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out"),
        "--eval_strategy", "no", "--load_best_model_at_end", "false", "--early_stopping_patience", "None",
        "--max_length", "64"])
    model, tokenizer = load_model_and_tokenizer(model_args, training_args)
    rows = load_prepared(str(prepared_dataset_dir), "bucket1").select(range(8))
    recipe_args = dict(vars(training_args))
    process_before = _fast_path_state_of_process()
    training_args.use_fast_path = True  # as the recipe resolves on a GPU
    with ExitStack() as run:
        trainer = build_trainer(model, tokenizer, training_args, model_args, rows, undo=run)
        assert type(trainer) is ParaphrxSFTTrainer
        applied = _fast_path_state(trainer)
        assert applied["args"]["padding_free"] and applied["args"]["per_device_train_batch_size"] == 4
        assert all(applied["trainer"].values()) and all(applied["model"].values())
        assert isinstance(applied["collator"], LabelPositionsCollator)
        assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) <= 64
        assert all(forward is not None and compiled is not None for forward, compiled in applied["layers"])
        assert applied["recompile_limit"] >= 64 and applied["masking"] is not process_before["masking"]
        truncated = trainer.train_dataset
    undone = _fast_path_state(trainer)
    assert undone["args"] == {**recipe_args, "use_fast_path": True}
    assert not any(undone["trainer"].values()) and not any(undone["model"].values())
    assert not isinstance(undone["collator"], LabelPositionsCollator) and undone["datasets"][0] is not truncated
    assert all(forward is None and compiled is None for forward, compiled in undone["layers"])
    assert undone["base_forward"] is not applied["base_forward"]  # TRL's own forward again
    assert _fast_path_state_of_process() == process_before
