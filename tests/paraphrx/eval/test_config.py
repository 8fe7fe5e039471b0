"""The evaluation's flags: no LoRA training flags, a results folder that never replaces the full report, and
--recompute_metrics_only refusing what it would ignore."""

from pathlib import Path

import pytest

from paraphrx.eval.config import EvalArguments, EvalModelConfig, check_rescoring_flags
from paraphrx.recipe_cli import RecipeError, parse_recipe

TYPES = (EvalArguments, EvalModelConfig)


def test_lora_training_flags_are_not_evaluation_flags(capsys):
    with pytest.raises(SystemExit):
        parse_recipe(["--help"], TYPES)
    text = capsys.readouterr().out
    assert "--load_in_4bit" in text and "--model_name_or_path" in text
    assert not [word for word in ("--lora_r", "--use_peft", "--lora_target_modules", "--use_dora") if word in text]
    with pytest.raises(RecipeError, match="unknown option '--lora_r'"):
        parse_recipe(["--lora_r", "8"], TYPES)


@pytest.mark.parametrize("argv, name", [
    ([], "paraphrx-alpaca"),  # what `make eval` writes
    (["--adapters", "outputs/bucket1", "outputs/bucket1-5/"], "paraphrx-alpaca-bucket1+bucket1-5"),
    (["--max_prompts", "1", "--max_paraphrases_per_prompt", "12", "--max_new_tokens", "32"],
     "paraphrx-alpaca-1prompts-12per-prompt-32tokens"),
    (["--merge_adapters", "--no_include_base", "--split", "validation"], "paraphrx-alpaca-validation-nobase-merged"),
    (["--adapters", "a", "b", "c", "d"], "paraphrx-alpaca-4adapters-"),
    (["--dataset", "me/other-data/", "--output_name", "mine", "--max_prompts", "2"], "mine"),
])  # fmt: skip
def test_only_the_full_evaluation_writes_the_datasets_report(argv, name):
    (eval_args, _) = parse_recipe(argv, TYPES)
    folder = eval_args.results_folder()
    assert folder.parent == Path("outputs/eval") and folder.name.startswith(name)
    if name.endswith("-"):
        assert len(folder.name) == len(name) + 8  # a short hash of the adapter names


def test_rescoring_refuses_the_flags_it_would_ignore():
    with pytest.raises(RecipeError) as err:
        parse_recipe(
            [
                "--recompute_metrics_only",
                "--adapters",
                "outputs/x",
                "--max_new_tokens",
                "8",
                "--dtype",
                "float32",
                "--bootstrap_seed",
                "3",
            ],
            TYPES,
            check_rescoring_flags,
        )
    assert str(err.value) == (
        "command line: recompute_metrics_only re-scores the stored generations and ignores "
        "--adapters, --max_new_tokens, --dtype: drop them (or run without "
        "--recompute_metrics_only to generate anew)"
    )
    eval_args, _ = parse_recipe(
        ["--recompute_metrics_only", "--output_name", "run", "--bootstrap_seed", "3", "--judge_model", "m"],
        TYPES,
        check_rescoring_flags,
    )
    assert eval_args.recompute_metrics_only and eval_args.bootstrap_seed == 3
    check_rescoring_flags(EvalArguments(max_new_tokens=8), EvalModelConfig())  # generating: every flag counts


def test_an_output_folder_below_a_file_is_a_flag_error(tmp_path, monkeypatch):
    (tmp_path / "README.md").write_text("a file")
    monkeypatch.chdir(tmp_path)
    for flag in ("--output_dir", "--cache_dir", "--log_dir"):
        with pytest.raises(RecipeError) as err:
            parse_recipe([flag, "README.md/sub"], TYPES)
        assert str(err.value) == f"command line: {flag} README.md/sub: README.md is not a folder"
