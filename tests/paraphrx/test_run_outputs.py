"""The run folder policy: one run per folder, resume from the newest verified checkpoint, refuse a finished run,
replace one only once the new run is complete."""

import json
import subprocess
import sys

import pytest
import yaml
from loguru import logger

from paraphrx.checkpoints import write_checkpoint_marker
from paraphrx.recipe_cli import RecipeError, parse_recipe
from paraphrx.run_lock import FolderLock, lock_path
from paraphrx.run_outputs import (
    COMPLETE_MARKER,
    RunFolderError,
    claim_run_folder,
    hub_push,
    push_run,
    resolved_recipe,
    resume_hint,
)
from tests.conftest import FakeHfApi, tiny_recipe

TINY = tiny_recipe()


def _args(out, *extra):
    return parse_recipe([TINY, "--output_dir", str(out), *extra])[1]


def _checkpoint(out, step, complete=True):
    """A checkpoint folder with Trainer's files; `complete` marks it verified, as CheckpointMarkerCallback does."""
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name, size in (("adapter_model.safetensors", 300), ("optimizer.pt", 500), ("rng_state.pth", 50)):
        (path / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        write_checkpoint_marker(path, step)
    return path


@pytest.fixture
def logged():
    """The messages paraphrx logs during the test, one string."""
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}")
    yield lambda: "".join(lines)
    logger.remove(sink)


def resolve_checkpoint_or_refuse(training_args):
    """What a run would resume from (claim_run_folder, released at once)."""
    with claim_run_folder(training_args) as run:
        return run.checkpoint


def test_fresh_folder_starts_fresh(tmp_path):
    assert resolve_checkpoint_or_refuse(_args(tmp_path / "new")) is None


def test_resumes_from_the_newest_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    _checkpoint(out, 5)
    _checkpoint(out, 20)
    _checkpoint(out, 100)
    assert resolve_checkpoint_or_refuse(_args(out)) == str(out / "checkpoint-100")  # numeric, not lexical order


def test_skips_a_checkpoint_killed_while_saving(tmp_path, logged):
    out = tmp_path / "run"
    _checkpoint(out, 4)
    _checkpoint(out, 8, complete=False)
    assert resolve_checkpoint_or_refuse(_args(out)) == str(out / "checkpoint-4")
    assert "checkpoint-8: no checkpoint_complete.json (killed or out of disk space while saving)" in logged()
    assert not (out / "checkpoint-8").exists(), "a skipped newer checkpoint is removed: the resumed run saves it again"


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


def test_overwrite_output_dir_starts_over_beside_the_previous_run(tmp_path):
    out = tmp_path / "run"
    _checkpoint(out, 8)
    (out / COMPLETE_MARKER).write_text("{}")
    args = _args(out, "--overwrite_output_dir", "true")
    with claim_run_folder(args) as run:
        assert run.checkpoint is None and run.output_dir == out
        assert run.train_dir.parent == tmp_path and run.train_dir.name.startswith(".run.tmp-")
        assert args.output_dir == str(run.train_dir)
        assert (out / COMPLETE_MARKER).exists() and (out / "checkpoint-8").is_dir(), "the previous run stays"
    assert args.output_dir == str(out)


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


@pytest.mark.parametrize("damage", ["adapter_model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"])
def test_a_truncated_checkpoint_file_is_named_and_skipped(tmp_path, logged, damage):
    """The file is cut at a chosen byte after the checkpoint was verified (a full disk, a torn copy)."""
    out = tmp_path / "run"
    _checkpoint(out, 4)
    newest = _checkpoint(out, 8)
    with (newest / damage).open("r+b") as handle:
        handle.truncate(7)
    assert resolve_checkpoint_or_refuse(_args(out)) == str(out / "checkpoint-4")
    err = logged()
    assert f"skipping {newest}: {damage} is 7 bytes" in err and "when saved (truncated or overwritten)" in err


def test_a_changed_checkpoint_file_and_an_explicit_resume_from_it(tmp_path):
    out = tmp_path / "run"
    _checkpoint(out, 4)
    newest = _checkpoint(out, 8)
    data = bytearray((newest / "optimizer.pt").read_bytes())
    data[100] ^= 1  # same size, one bit flipped
    (newest / "optimizer.pt").write_bytes(bytes(data))
    with pytest.raises(
        RunFolderError,
        match=r"--resume_from_checkpoint .*checkpoint-8: optimizer.pt changed since it "
        r"was saved \(sha256 differs\)",
    ):
        resolve_checkpoint_or_refuse(_args(out, "--resume_from_checkpoint", str(newest)))
    assert resolve_checkpoint_or_refuse(_args(out)) == str(out / "checkpoint-4")


def test_a_second_process_on_the_folder_stops_at_once_naming_the_first(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from paraphrx.run_lock import FolderLock\n"
                "lock = FolderLock(sys.argv[1]); print('locked', flush=True); time.sleep(600)"
            ),
            str(out),
            "--my-flag",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError) as err:
            resolve_checkpoint_or_refuse(_args(out))
        message = str(err.value)
        assert "\n" not in message and f"{out} is in use by another run (pid {holder.pid} on " in message
        assert "--my-flag" in message and "started 20" in message and "choose another --output_dir" in message
    finally:
        holder.kill()
        holder.wait()
    assert resolve_checkpoint_or_refuse(_args(out)) is None, "a killed holder leaves no lock behind"
    assert lock_path(out) == tmp_path / ".run.lock"


def test_the_lock_is_released_when_the_run_ends(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), claim_run_folder(_args(out)):
        raise RuntimeError("training failed")
    FolderLock(out).release()  # free again


def test_a_run_that_fails_before_writing_anything_leaves_no_empty_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), claim_run_folder(_args(out)):
        out.mkdir()  # what Trainer does when it is built
        raise RuntimeError("the recipe's trainer could not be built")
    assert not out.exists()
    _checkpoint(out, 2)
    with pytest.raises(KeyboardInterrupt), claim_run_folder(_args(out)):
        raise KeyboardInterrupt
    assert (out / "checkpoint-2").is_dir(), "a folder with a run in it stays"


def test_ctrl_c_says_whether_a_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    assert resume_hint(out) == "no checkpoint was saved yet; rerun the same command to start again"
    for step in (5, 10):
        _checkpoint(out, step)
    assert resume_hint(out) == (
        f"rerun the same command to resume from the newest verified checkpoint ({out}/checkpoint-10)"
    )


def test_target_modules_are_written_in_a_stable_order(tmp_path):
    """peft writes them in the order of a Python set, which changes with every process (hash randomisation): the same
    adapter trained again had another adapter_config.json and so another evaluation cache key."""
    script = (
        "import sys; from peft import LoraConfig\n"
        "LoraConfig(target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'])"
        ".save_pretrained(sys.argv[1])\n"
        "from paraphrx.run_outputs import sort_adapter_config; sort_adapter_config(sys.argv[1])"
    )
    written = set()
    for seed in ("1", "2", "3"):
        folder = tmp_path / seed
        subprocess.run(
            [sys.executable, "-c", script, str(folder)],
            check=True,
            timeout=300,
            env={**__import__("os").environ, "PYTHONHASHSEED": seed},
        )
        written.add((folder / "adapter_config.json").read_bytes())
    assert len(written) == 1
    config = json.loads(written.pop())
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls, FakeHfApi.existing = [], {}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi.calls


def test_push_to_hub_creates_the_repo_before_training_and_uploads_the_finished_run_once(tmp_path, fake_hub):
    out = tmp_path / "bucket1"
    args = _args(out, "--push_to_hub", "true", "--hub_model_id", "me/bucket1", "--hub_private_repo", "true")
    with hub_push(args) as repo:
        assert repo == "me/bucket1" and args.push_to_hub is False  # the Trainer's own pushes stay off
        assert [name for name, _ in fake_hub] == ["init", "repo_info", "create_repo"]
        assert dict(fake_hub)["create_repo"] == {
            "repo_id": "me/bucket1",
            "repo_type": "model",
            "private": True,
            "exist_ok": True,
        }
    assert args.push_to_hub is True  # as the recipe says, once the run is over
    for name in ("adapter_model.safetensors", "README.md", "run_complete.json", "checkpoint-3/optimizer.pt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    assert push_run(out, repo) == "https://huggingface.co/me/bucket1/commit/abc"
    upload = dict(fake_hub)["upload_folder"]
    assert (upload["folder_path"], upload["repo_id"], upload["repo_type"]) == (str(out), "me/bucket1", "model")
    assert "checkpoint-*" in upload["ignore_patterns"]
    with hub_push(_args(out)) as repo:  # no push asked: no Hub request
        assert repo is None
    assert [name for name, _ in fake_hub].count("init") == 2


def test_push_to_hub_without_a_reachable_hub_is_one_line_at_once(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from paraphrx.hub import PushError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = _args(tmp_path / "run", "--push_to_hub", "true")  # hub_model_id: the run folder's name
    with pytest.raises(PushError) as err, hub_push(args):
        pass
    assert str(err.value).startswith("push_to_hub (hub_model_id run): OfflineModeIsEnabled: ")
    assert err.value.exit_code == 1 and "\n" not in str(err.value)
    with pytest.raises(PushError, match=rf"; the run is complete in {tmp_path} \(upload it later: hf upload me/x "):
        push_run(tmp_path, "me/x")


def test_hub_strategy_that_pushes_checkpoints_is_refused():
    with pytest.raises(RecipeError, match="hub_strategy: all_checkpoints: paraphrx pushes the finished run once"):
        parse_recipe([TINY, "--push_to_hub", "true", "--hub_strategy", "all_checkpoints"])
