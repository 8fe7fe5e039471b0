"""build_trainer: SFTTrainer as the recipe asks and, on the fast path, every listed change applied around its
construction and undone when the run's stack closes (on the CPU, where the fast path is applied here by hand)."""

from contextlib import ExitStack

from paraphrx.completion_positions import LabelPositionsCollator
from paraphrx.dataset_io import load_prepared
from paraphrx.fast_path import decoder_layers
from paraphrx.modeling import load_model_and_tokenizer
from paraphrx.recipe_cli import parse_recipe
from paraphrx.trainer_factory import ParaphrxSFTTrainer, build_trainer
from tests.conftest import NO_EVALUATION, tiny_recipe


def _fast_path_state_of_process() -> dict:
    """The process-wide settings the fast path changes: transformers' packed-sequence check and block-mask builder,
    Gemma-2's sliding-window mask builder, dynamo's limit and float specialization, the compile caches' folders."""
    import os

    import torch._dynamo
    from transformers import masking_utils
    from transformers.models.gemma2 import modeling_gemma2

    return {
        "masking": masking_utils.find_packed_sequence_indices,
        "block_mask": masking_utils.create_block_mask,
        "sliding_mask": modeling_gemma2.create_sliding_window_causal_mask,
        "recompile_limit": torch._dynamo.config.recompile_limit,
        "specialize_float": torch._dynamo.config.specialize_float,
        "cache_dirs": {name: os.environ.get(name) for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")},
    }


def _fast_path_state(trainer) -> dict:
    """What the fast path's changes touch on a trainer, its model and the process."""
    base = trainer.model.get_base_model()
    layers = decoder_layers(trainer.model)
    return {
        "args": dict(vars(trainer.args)),
        "trainer": {
            name: name in vars(trainer)
            for name in (
                "compute_loss",
                "log",
                "_clip_grad_norm",
                "floating_point_ops",
                "get_eval_dataloader",
                "evaluation_loop",
            )
        },
        "collator": trainer.data_collator,
        "datasets": (trainer.train_dataset, trainer.eval_dataset),
        "model": {name: name in vars(trainer.model) for name in ("train", "zero_grad")},
        "base_forward": base.forward,
        "embedding_hooks": len(base.get_input_embeddings()._forward_hooks),
        "layers": [(vars(layer).get("forward"), vars(layer).get("_compiled_call_impl")) for layer in layers],
        **_fast_path_state_of_process(),
    }


def test_build_trainer_applies_every_change_and_the_run_undoes_them(tiny_model_dir, prepared_dataset_dir, tmp_path):
    """The CPU has no fast path, so its changes are applied here by hand (nothing is compiled until a forward runs):
    build_trainer applies each listed change, and closing the run's stack puts every one back."""
    script_args, training_args, model_args = parse_recipe(
        [
            tiny_recipe(),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(tmp_path / "out"),
            *NO_EVALUATION,
            "--max_length",
            "64",
        ]
    )
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
        assert applied["specialize_float"] and applied["embedding_hooks"] == 1  # one graph for every layer
        # rows cut at 64 tokens, the tiny model's window: one mask for every layer, block masks compiled once
        assert applied["sliding_mask"] is not process_before["sliding_mask"]
        assert applied["block_mask"] is not process_before["block_mask"]
        assert applied["cache_dirs"]["TORCHINDUCTOR_CACHE_DIR"]  # explicit, and Triton's beside it
        assert applied["cache_dirs"]["TRITON_CACHE_DIR"].startswith(applied["cache_dirs"]["TORCHINDUCTOR_CACHE_DIR"])
        truncated = trainer.train_dataset
    undone = _fast_path_state(trainer)
    assert undone["args"] == {**recipe_args, "use_fast_path": True}
    assert not any(undone["trainer"].values()) and not any(undone["model"].values())
    assert not isinstance(undone["collator"], LabelPositionsCollator) and undone["datasets"][0] is not truncated
    assert all(forward is None and compiled is None for forward, compiled in undone["layers"])
    assert undone["base_forward"] is not applied["base_forward"]  # TRL's own forward again
    assert undone["embedding_hooks"] == 0
    assert _fast_path_state_of_process() == process_before
