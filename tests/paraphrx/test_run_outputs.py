"""The run folder policy: resume from the newest complete checkpoint, refuse a finished run, atomic writes."""


import pytest
import yaml

from paraphrx.recipe_cli import parse_recipe
from paraphrx.run_outputs import (
    COMPLETE_MARKER,
    RunFolderError,
    last_complete_checkpoint,
    resolve_checkpoint_or_refuse,
    resolved_recipe,
    write_text_atomic,
)
from tests.conftest import tiny_recipe

TINY = tiny_recipe()


def _args(out, *extra):
    return parse_recipe([TINY, "--output_dir", str(out), *extra])[1]


def _checkpoint(out, step, complete=True):
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_fresh_folder_starts_fresh(tmp_path):
    assert resolve_checkpoint_or_refuse(_args(tmp_path / "new")) is None


def test_resumes_from_the_newest_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    _checkpoint(out, 5)
    _checkpoint(out, 20)
    _checkpoint(out, 100)
    assert resolve_checkpoint_or_refuse(_args(out)) == str(out / "checkpoint-100")  # numeric, not lexical order


def test_skips_a_checkpoint_killed_while_saving(tmp_path):
    out = tmp_path / "run"
    _checkpoint(out, 4)
    _checkpoint(out, 8, complete=False)
    assert last_complete_checkpoint(out) == str(out / "checkpoint-4")


def test_explicit_resume_from_checkpoint_wins(tmp_path):
    out = tmp_path / "run"
    _checkpoint(out, 8)
    chosen = str(_checkpoint(out, 4))
    assert resolve_checkpoint_or_refuse(_args(out, "--resume_from_checkpoint", chosen)) == chosen


def test_finished_run_is_refused_with_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / COMPLETE_MARKER).write_text("{}")
    with pytest.raises(RunFolderError) as err:
        resolve_checkpoint_or_refuse(_args(out))
    assert "--overwrite_output_dir" in str(err.value) and "\n" not in str(err.value)
    assert (out / COMPLETE_MARKER).exists()


def test_overwrite_output_dir_starts_over(tmp_path):
    out = tmp_path / "run"
    _checkpoint(out, 8)
    (out / COMPLETE_MARKER).write_text("{}")
    assert resolve_checkpoint_or_refuse(_args(out, "--overwrite_output_dir", "true")) is None
    assert not out.exists()


def test_resolved_recipe_keeps_special_tokens_and_reparses(tmp_path):
    script, train, model = parse_recipe([TINY, "--eos_token", "<end_of_turn>"])
    recipe = resolved_recipe(script, train, model)
    assert recipe["eos_token"] == "<end_of_turn>" and recipe["hub_token"] is None
    assert recipe["lr_scheduler_type"] == "cosine" and recipe["lora_target_modules"][0] == "q_proj"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert resolved_recipe(*parse_recipe([str(path)])) == recipe


def test_hub_token_in_a_recipe_is_refused():
    """It would be pickled into training_args.bin in every checkpoint; the token comes from HF_TOKEN only."""
    from paraphrx.recipe_cli import RecipeError

    with pytest.raises(RecipeError, match="hub_token: give the Hub token through the HF_TOKEN environment variable"):
        parse_recipe([TINY, "--hub_token", "hf_" + "x" * 30])


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    precious = tmp_path / "outputs"
    (precious / "bucket1").mkdir(parents=True)
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="is not a paraphrx run folder"):
        resolve_checkpoint_or_refuse(_args(precious, "--overwrite_output_dir", "true"))
    assert (precious / "notes.txt").read_text() == "keep me"


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_text_atomic(target, 123)  # not text: fails while writing the temporary file
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
