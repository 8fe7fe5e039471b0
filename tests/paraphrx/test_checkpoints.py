"""Checkpoint verification: the marker written after Trainer's save, and every way a checkpoint can fail its check."""

import json
from types import SimpleNamespace

import pytest

from paraphrx.checkpoints import (
    CHECKPOINT_MARKER,
    CheckpointMarkerCallback,
    checkpoint_problem,
    newest_verified_checkpoint,
    numbered_checkpoints,
    write_checkpoint_marker,
)


def _checkpoint(root, step, files=None):
    folder = root / f"checkpoint-{step}"
    (folder / "sub").mkdir(parents=True)
    for name, data in (files or {"adapter_model.safetensors": b"a" * 40, "sub/shard.bin": b"s" * 9}).items():
        (folder / name).write_bytes(data)
    return folder


def test_the_marker_lists_every_file_with_size_and_sha256(tmp_path):
    import hashlib

    folder = _checkpoint(tmp_path, 3)
    write_checkpoint_marker(folder, 3)
    marker = json.loads((folder / CHECKPOINT_MARKER).read_text())
    assert marker["global_step"] == 3
    assert marker["files"] == {
        "adapter_model.safetensors": {"bytes": 40, "sha256": hashlib.sha256(b"a" * 40).hexdigest()},
        "sub/shard.bin": {"bytes": 9, "sha256": hashlib.sha256(b"s" * 9).hexdigest()},
    }
    assert checkpoint_problem(folder) is None


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda f: (f / CHECKPOINT_MARKER).unlink(), "no checkpoint_complete.json (killed or out of disk space"),
        (lambda f: (f / CHECKPOINT_MARKER).write_text('{"files": {"a": '), "checkpoint_complete.json unreadable"),
        (lambda f: (f / CHECKPOINT_MARKER).write_text('{"files": {}}'), "lists no files"),
        (lambda f: (f / "sub" / "shard.bin").unlink(), "sub/shard.bin is missing"),
        (
            lambda f: (f / "adapter_model.safetensors").write_bytes(b"a" * 39),
            "adapter_model.safetensors is 39 bytes, 40",
        ),
        (lambda f: (f / "adapter_model.safetensors").write_bytes(b"b" * 40), "changed since it was saved"),
    ],
)
def test_every_failed_check_says_why(tmp_path, damage, problem):
    folder = _checkpoint(tmp_path, 3)
    write_checkpoint_marker(folder, 3)
    damage(folder)
    assert problem in checkpoint_problem(folder)


def test_newest_verified_is_by_step_and_lists_what_it_skipped(tmp_path):
    for step in (5, 20, 100):
        write_checkpoint_marker(_checkpoint(tmp_path, step), step)
    _checkpoint(tmp_path, 200)  # killed while saving
    (tmp_path / "checkpoint-x").mkdir()
    assert [step for step, _ in numbered_checkpoints(tmp_path)] == [200, 100, 20, 5]
    chosen, skipped = newest_verified_checkpoint(tmp_path)
    assert chosen == tmp_path / "checkpoint-100"
    assert [(path.name, why.split(" (")[0]) for path, why in skipped] == [
        ("checkpoint-200", "no checkpoint_complete.json")
    ]
    assert newest_verified_checkpoint(tmp_path / "missing") == (None, [])


def test_the_callback_marks_the_checkpoint_trainer_just_saved(tmp_path):
    folder = _checkpoint(tmp_path, 7)
    args = SimpleNamespace(output_dir=str(tmp_path), should_save=True)
    CheckpointMarkerCallback().on_save(args, SimpleNamespace(global_step=7), None)
    assert checkpoint_problem(folder) is None
    other = _checkpoint(tmp_path, 8)
    CheckpointMarkerCallback().on_save(
        SimpleNamespace(output_dir=str(tmp_path), should_save=False), SimpleNamespace(global_step=8), None
    )  # not the saving process
    assert not (other / CHECKPOINT_MARKER).exists()
