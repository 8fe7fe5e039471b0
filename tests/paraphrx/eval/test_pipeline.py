"""The evaluation run's parts: which base and loading the adapters ask for, the test rows and their checks."""

import pytest

from paraphrx.eval import pipeline
from paraphrx.eval.config import EvalArguments, EvalModelConfig
from paraphrx.eval.pipeline import EvalError
from tests.conftest import prepared_row, write_prepared


def test_recipe_yaml_decides_how_the_base_is_loaded(tiny_model_dir, eval_adapters):
    for adapter in eval_adapters:
        (adapter / "recipe.yaml").write_text(
            "dtype: float32\nload_in_4bit: true\nuse_bnb_nested_quant: true\nlearning_rate: 0.0002\n"
        )
    try:
        args = pipeline.resolve_model_config(EvalModelConfig(), {a.name: a for a in eval_adapters}, use_recipe=True)
        assert args.model_name_or_path == str(tiny_model_dir)  # from adapter_config.json
        assert (args.load_in_4bit, args.use_bnb_nested_quant, args.dtype) == (True, True, "float32")
        plain = pipeline.resolve_model_config(EvalModelConfig(), {a.name: a for a in eval_adapters}, use_recipe=False)
        assert plain.load_in_4bit is False and plain.dtype == "bfloat16"
        (eval_adapters[1] / "recipe.yaml").write_text("load_in_4bit: false\n")
        with pytest.raises(EvalError, match="recipe.yaml: model keys"):
            pipeline.resolve_model_config(EvalModelConfig(), {a.name: a for a in eval_adapters}, use_recipe=True)
        with pytest.raises(EvalError, match="field 'base_model_name_or_path'"):
            pipeline.resolve_model_config(
                EvalModelConfig(model_name_or_path="other/model"), {a.name: a for a in eval_adapters}, use_recipe=False
            )
    finally:
        for adapter in eval_adapters:
            (adapter / "recipe.yaml").unlink()


def test_quick_run_selection_keeps_the_original_and_every_bucket():
    rows = [
        {"source": "alpaca", "prompt_count": p, "bucket": b, "instruct_type": t}
        for p in (2, 1)
        for b, t in [(3, "x"), (3, "y"), (1, "z"), (5, "w"), (2, "instruction_original")]
    ]
    rows.append({"source": "gsm8k", "prompt_count": 9, "bucket": 1, "instruct_type": "x"})
    picked = pipeline.select_rows(rows, max_prompts=1, max_per_prompt=4)
    assert [(r["source"], r["prompt_count"]) for r in picked] == [("alpaca", 1)] * 4 + [("gsm8k", 9)]
    assert [(r["bucket"], r["instruct_type"]) for r in picked[:4]] == [
        (2, "instruction_original"),
        (1, "z"),
        (3, "x"),
        (5, "w"),
    ]


def test_bad_rows_name_the_row_and_field(tmp_path):
    row = prepared_row()
    folder = write_prepared(tmp_path / "bad", [row, {**row, "bucket": 7}])
    with pytest.raises(EvalError, match=r"split 'test' row 1: field 'bucket' is 7, expected 1..5"):
        pipeline.load_rows(EvalArguments(dataset=str(folder)))
    with pytest.raises(EvalError, match="split 'nope'"):
        pipeline.load_rows(EvalArguments(dataset=str(folder), split="nope"))
