"""Recipe parsing: the launch forms, overrides, one-line errors, and the shipped recipes' values."""

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paraphrx.buckets import parse_bucket_spec, split_name
from paraphrx.config import EVAL_SUBSET_ROWS, ParaphrxSFTConfig
from paraphrx.recipe_cli import RecipeError, normalize_argv, parse_recipe
from paraphrx.run_outputs import resolved_recipe
from tests.conftest import REPO, tiny_recipe

GEMMA_RECIPES = sorted((REPO / "recipes").glob("bucket*.yaml"), key=lambda p: (len(p.stem), p.stem))
TINY_RECIPES = sorted((REPO / "recipes" / "tiny").glob("bucket*.yaml"), key=lambda p: (len(p.stem), p.stem))
TINY = tiny_recipe()


def test_positional_and_config_forms_parse_the_same():
    positional = parse_recipe([TINY])
    flag = parse_recipe(["--config", TINY])
    assert resolved_recipe(*positional) == resolved_recipe(*flag)
    assert positional[1].run_name == "tiny-bucket1"


def test_overrides_apply_on_top_of_the_recipe():
    script, train, model = parse_recipe(
        [TINY, "--learning_rate", "3e-4", "--lora_r", "8", "--use_peft", "false", "--dataset_train_split", "bucket1_3"]
    )
    assert train.learning_rate == pytest.approx(3e-4)
    assert model.lora_r == 8 and model.use_peft is False
    assert script.dataset_train_split == "bucket1_3"
    # untouched keys keep the recipe's values
    assert train.adam_beta2 == pytest.approx(0.95) and model.load_in_4bit is True


def test_overrides_work_with_the_config_flag_after_them():
    _, train, _ = parse_recipe(["--max_steps", "3", "--config", TINY])
    assert train.max_steps == 3


def test_positional_and_config_together_is_an_error():
    with pytest.raises(RecipeError, match="once"):
        normalize_argv([TINY, "--config", TINY])


def _write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(Path(TINY).read_text() + text)
    return str(path)


def test_unknown_yaml_key_names_the_key(tmp_path):
    with pytest.raises(RecipeError, match=r"r\.yaml: unknown key 'lora_rank'"):
        parse_recipe([_write(tmp_path, "lora_rank: 8\n")])


def test_unknown_command_line_option_names_it():
    with pytest.raises(RecipeError, match="unknown option '--lora_rank'"):
        parse_recipe([TINY, "--lora_rank", "8"])


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(RecipeError, match="learning_rate"):
        parse_recipe([TINY, "--learning_rate", "fast"])


# TrlParser hands a recipe's values to the dataclasses unconverted: these reached peft or the Trainer and failed there
# in a traceback (lora_r: 16.5, max_steps: 2.5), or were taken as they were (seed: true).
@pytest.mark.parametrize("line, expected", [
    ("lora_r: 16.5", "lora_r: expected an integer, got 16.5"),
    ("max_steps: 2.5", "max_steps: expected an integer, got 2.5"),
    ("seed: true", "seed: expected an integer, got True"),
    ("learning_rate: [0.1]", "learning_rate: expected a number, got [0.1]"),
    ("max_steps: {a: 1}", "max_steps: expected an integer, got {'a': 1}"),
    ("bf16: maybe", "bf16: expected true or false or null, got 'maybe'"),
    ("dataset_revision: 1234567", "dataset_revision: expected a string or null, got 1234567"),
    ("fast_path: fastest", "fast_path: expected one of 'auto', 'on', 'off', got 'fastest'"),
    ("lr_scheduler_type: cosin", "lr_scheduler_type: expected one of 'linear', 'cosine', "),
    ("lora_target_modules: [q_proj, 3]", "lora_target_modules: expected a list of strings or null, got ['q_proj', 3]"),
])  # fmt: skip
def test_a_value_of_the_wrong_type_names_the_file_and_key(tmp_path, line, expected):
    path = _write(tmp_path, line + "\n")
    with pytest.raises(RecipeError) as err:
        parse_recipe([path])
    assert str(err.value).startswith(f"{path}: {expected}")


@pytest.mark.parametrize("line, key, value", [
    ("learning_rate: 1e-4", "learning_rate", 1e-4),  # a string to YAML (no dot), a float to argparse
    ("max_steps: '5'", "max_steps", 5),
    ("bf16: 'no'", "bf16", False),
    ("lora_target_modules: all-linear", "lora_target_modules", "all-linear"),  # peft's shorthand for a list field
])  # fmt: skip
def test_values_are_taken_as_the_command_line_would_take_them(tmp_path, line, key, value):
    parsed = parse_recipe([_write(tmp_path, line + "\n")])
    assert next(getattr(c, key) for c in parsed if hasattr(c, key)) == pytest.approx(value)


@pytest.mark.parametrize("argv, expected", [
    (["--max_steps", "abc"], "command line: --max_steps: invalid int value: 'abc'"),
    (["--lora_r", "16.5"], "command line: --lora_r: invalid int value: '16.5'"),
    (["--output_dir", "README.md/sub"], "command line: output_dir README.md/sub: README.md is not a folder"),
    (["--lora_r", "0"], "command line: lora_r: the LoRA rank must be at least 1, got 0"),
    (["--lora_dropout", "1.5"], "command line: lora_dropout: expected a probability in [0, 1), got 1.5"),
])  # fmt: skip
def test_a_bad_command_line_value_is_blamed_on_the_command_line_not_the_recipe(argv, expected, monkeypatch):
    monkeypatch.chdir(REPO)  # README.md is a file here
    with pytest.raises(RecipeError) as err:
        parse_recipe([TINY, *argv])
    assert str(err.value) == expected


def test_a_check_across_keys_names_where_each_came_from(tmp_path):
    with pytest.raises(RecipeError, match=rf"^{TINY} and the command line: early_stopping_patience needs "):
        parse_recipe([TINY, "--load_best_model_at_end", "false"])  # the recipe's patience, the command line's false
    path = _write(tmp_path, "load_best_model_at_end: false\n")
    with pytest.raises(RecipeError, match=rf"^{path}: early_stopping_patience needs "):
        parse_recipe([path])


def test_report_to_an_integration_that_is_not_installed_is_one_line(tmp_path, monkeypatch):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_wandb_available", lambda: False)
    with pytest.raises(RecipeError) as err:
        parse_recipe([TINY, "--report_to", "wandb"])
    assert str(err.value) == (
        'command line: report_to: wandb is not installed (pip install -e ".[wandb]"), or choose report_to: none'
    )
    path = _write(tmp_path, "report_to: wandb\n")
    with pytest.raises(RecipeError, match=rf"^{path}: report_to: wandb is not installed"):
        parse_recipe([path])
    with pytest.raises(RecipeError, match="report_to: unknown integration 'wandbb'"):
        parse_recipe([TINY, "--report_to", "wandbb"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CPU-only machine")
def test_a_gpu_recipe_on_a_cpu_says_it_needs_cuda_and_points_at_the_tiny_recipes():
    recipe = str(GEMMA_RECIPES[3])
    with pytest.raises(RecipeError) as err:
        parse_recipe([recipe])
    assert str(err.value) == (
        f"{recipe}: bf16: true trains on a CUDA GPU, and this machine has none; on the CPU run a "
        "tiny recipe (recipes/tiny/, `make train-tiny`) or add --use_cpu true --bf16 false"
    )


def test_our_recipes_raise_no_deprecation_warning():
    """transformers 5.24 renamed gradient_checkpointing to activation_checkpointing and warns on the old name, which
    the recipes keep (5.17, the GPU image, knows only that one): the value moves to the new name before it looks."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in [*TINY_RECIPES, *GEMMA_RECIPES]:
            _, train, _ = parse_recipe([str(path), "--use_cpu", "true", "--bf16", "false"])
            assert train.gradient_checkpointing is True
            assert getattr(train, "activation_checkpointing", True) is True
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))], [
        str(w.message) for w in caught
    ]


def _help(capsys, dataclass_types) -> str:
    with pytest.raises(SystemExit) as done:
        parse_recipe(["--help"], dataclass_types)
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_every_entry_points_help_prints(capsys):
    """`evaluate_paraphrx.py --help` failed on the "95%" in a flag's help (argparse formats help with `%`)."""
    from paraphrx.config import RECIPE_DATACLASSES
    from paraphrx.eval.config import EvalArguments, EvalModelConfig
    from paraphrx.label_mask import LabelMaskArguments
    from prep.config import PrepConfig

    for types in (
        RECIPE_DATACLASSES,
        (EvalArguments, EvalModelConfig),
        (PrepConfig,),
        (*RECIPE_DATACLASSES, LabelMaskArguments),
    ):
        assert "--help" in _help(capsys, types)
    assert "for the 95% intervals" in _help(capsys, (EvalArguments, EvalModelConfig))


def test_no_switches_say_what_they_do(capsys):
    """HfArgumentParser gives `--no_include_base` the help of `--include_base` ("Also evaluate the base model")."""
    from paraphrx.eval.config import EvalArguments, EvalModelConfig

    text = _help(capsys, (EvalArguments, EvalModelConfig))
    assert "--no_include_base, --no-include-base Turn --include_base off." in text
    assert "--no_use_cache, --no-use-cache Turn --use_cache off." in text


@pytest.mark.parametrize("word, expected", [("on", "on"), ("off", "off"), ("auto", "auto")])
def test_bare_yaml_on_off_for_fast_path(tmp_path, word, expected):
    if word == "on" and not __import__("torch").cuda.is_available():
        with pytest.raises(RecipeError, match="fast_path: on is not possible here"):
            parse_recipe([_write(tmp_path, f"fast_path: {word}\n")])
        return
    assert parse_recipe([_write(tmp_path, f"fast_path: {word}\n")])[1].fast_path == expected


def test_broken_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model_name_or_path: x\nlora_r: [16\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml \(line \d+\): invalid YAML"):
        parse_recipe([str(path)])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        parse_recipe([str(tmp_path / "nope.yaml")])


def test_early_stopping_needs_best_model_tracking():
    with pytest.raises(RecipeError, match="early_stopping_patience"):
        parse_recipe([TINY, "--load_best_model_at_end", "false"])


def test_eval_subset_rows_and_its_old_name():
    assert parse_recipe([TINY])[0].eval_subset_rows == 16
    assert parse_recipe([TINY, "--eval_subset_rows", "null"])[0].eval_subset_rows is None
    with pytest.warns(FutureWarning, match="max_eval_samples is deprecated"):
        script = parse_recipe([TINY, "--max_eval_samples", "8"])[0]
    assert (script.eval_subset_rows, script.max_eval_samples) == (8, None)  # so recipe.yaml reruns the same
    with pytest.raises(RecipeError, match="eval_subset_rows: expected a number of rows >= 1 or null, got 0"):
        parse_recipe([TINY, "--eval_subset_rows", "0"])


def test_bad_recipe_exits_2_with_one_line_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_sft.py"), _write(tmp_path, "lora_rank: 8\n")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'lora_rank'" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_five_gemma_recipes_carry_the_seed_defaults():
    assert [p.stem for p in GEMMA_RECIPES] == ["bucket1", "bucket1-2", "bucket1-3", "bucket1-4", "bucket1-5"]
    for path in GEMMA_RECIPES:
        script, train, model = parse_recipe([str(path), "--use_cpu", "true"])  # bf16 checks need a GPU otherwise
        spec = path.stem.removeprefix("bucket")
        assert script.dataset_train_split == split_name(parse_bucket_spec(spec))
        assert script.dataset_test_split == "validation"
        assert train.run_name == path.stem and train.output_dir == f"outputs/{path.stem}"
        assert model.model_name_or_path == "google/gemma-2-2b-it"
        assert (model.load_in_4bit, model.bnb_4bit_quant_type, model.use_bnb_nested_quant) == (True, "nf4", True)
        assert model.dtype == "bfloat16" and model.attn_implementation == "eager"
        assert (model.use_peft, model.lora_r, model.lora_alpha, model.lora_dropout) == (True, 16, 32, 0.05)
        assert sorted(model.lora_target_modules) == sorted(
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        )
        assert (train.adam_beta1, train.adam_beta2, train.adam_epsilon, train.weight_decay) == (0.9, 0.95, 1e-6, 0.0)
        assert train.learning_rate == 2e-4 and train.lr_scheduler_type.value == "cosine"
        assert math.isclose(train.warmup_steps, 0.05) and train.num_train_epochs == 3
        assert (train.per_device_train_batch_size, train.gradient_accumulation_steps) == (4, 4)
        assert train.eval_strategy.value == "steps" and train.eval_steps == 20
        assert script.eval_subset_rows == EVAL_SUBSET_ROWS == 64
        assert train.early_stopping_patience >= 1 and train.metric_for_best_model == "eval_loss"
        assert train.bf16 is True and train.fp16 is False and train.gradient_checkpointing is True
        assert train.trust_remote_code is False


def test_tiny_recipes_mirror_the_real_ones_at_toy_size():
    assert [p.stem for p in TINY_RECIPES] == ["bucket1", "bucket1-2", "bucket1-3", "bucket1-4", "bucket1-5"]
    for tiny, real in zip(TINY_RECIPES, GEMMA_RECIPES):
        t_script, t_train, t_model = parse_recipe([str(tiny)])
        r_script, _, r_model = parse_recipe([str(real), "--use_cpu", "true"])
        assert t_train.run_name == f"tiny-{tiny.stem}" and t_train.output_dir == f"outputs/tiny-{tiny.stem}"
        assert t_script.dataset_train_split == r_script.dataset_train_split
        assert t_model.model_name_or_path == "models/tiny-gemma2"
        for key in ("load_in_4bit", "bnb_4bit_quant_type", "use_bnb_nested_quant", "lora_r", "lora_target_modules"):
            assert getattr(t_model, key) == getattr(r_model, key), key
        assert t_train.max_steps > 0 and t_train.use_cpu is True


def test_overwrite_output_dir_is_ours_because_transformers_dropped_it():
    from transformers import TrainingArguments

    assert "overwrite_output_dir" not in TrainingArguments.__dataclass_fields__
    assert "overwrite_output_dir" in ParaphrxSFTConfig.__dataclass_fields__


# A 2 KB "billion laughs": each level nine aliases of the one before, 9**9 strings once expanded.
ALIAS_BOMB = (
    "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    + "learning_rate: *i\n"
)


@pytest.mark.parametrize(
    "text, words",
    [
        (
            ALIAS_BOMB,
            f"(line {len(Path(TINY).read_text().splitlines()) + 2}): invalid YAML: aliases (*name) are not "
            "allowed here",
        ),  # the first alias
        ("model_init_kwargs: " + "[" * 50_000 + "]" * 50_000 + "\n", "invalid YAML: nested deeper than 16 levels"),
        ("learning_rate: 1.0e-4\n# " + "x" * 300_000 + "\n", "bytes, more than a recipe's limit of 262,144"),
    ],
)
def test_hostile_yaml_is_refused_in_one_line_before_it_expands(tmp_path, text, words):
    from paraphrx.eval.config import EvalArguments, EvalModelConfig

    path = _write(tmp_path, text)
    start = time.monotonic()
    for dataclass_types in (None, (EvalArguments, EvalModelConfig)):  # a recipe; evaluate_paraphrx.py --config
        with pytest.raises(RecipeError) as err:
            parse_recipe([path], **({"dataclass_types": dataclass_types} if dataclass_types else {}))
        assert str(err.value).startswith(str(path)) and words in str(err.value) and "\n" not in str(err.value)
    assert time.monotonic() - start < 10


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run_name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(RecipeError, match=r"latin1.yaml: not UTF-8 \(invalid byte at position 13\)"):
        parse_recipe([str(path)])
