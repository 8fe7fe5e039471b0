"""A checkpoint counts only once it is complete and verified.

Trainer writes a checkpoint's files one after another (adapter, optimizer, scheduler, RNG states, and
`trainer_state.json` last, not atomically), so a kill or a full disk at any moment leaves a folder that can look
complete. After Trainer's save, `CheckpointMarkerCallback` writes `checkpoint_complete.json`, atomically and last,
with the size and sha256 of every file. Resuming takes the newest checkpoint whose files still match their marker
and logs every newer one it skipped, and why (no marker: killed while saving; a size or checksum that differs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from accelerate import PartialState
from loguru import logger
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from paraphrx.atomic_folder import write_json_atomic

CHECKPOINT_MARKER = "checkpoint_complete.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(folder: Path) -> dict[str, dict]:
    """{relative path: {"bytes", "sha256"}} of every file below `folder` but the marker."""
    return {
        path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != CHECKPOINT_MARKER
    }


def write_checkpoint_marker(folder: str | Path, global_step: int) -> Path:
    folder = Path(folder)
    return write_json_atomic(folder / CHECKPOINT_MARKER, {"global_step": global_step, "files": file_records(folder)})


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why `folder` must not be resumed from, or None when every file matches its marker."""
    folder = Path(folder)
    try:
        files = json.loads((folder / CHECKPOINT_MARKER).read_text(encoding="utf-8"))["files"]
        records = {name: (int(rec["bytes"]), str(rec["sha256"])) for name, rec in files.items()}
    except FileNotFoundError:
        return f"no {CHECKPOINT_MARKER} (killed or out of disk space while saving)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{CHECKPOINT_MARKER} unreadable ({type(err).__name__})"
    if not records:
        return f"{CHECKPOINT_MARKER} lists no files"
    for name, (size, sha256) in records.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size:,} bytes, {size:,} when saved (truncated or overwritten)"
        if sha256_file(path) != sha256:
            return f"{name} changed since it was saved (sha256 differs)"
    return None


def numbered_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoint-N` folder, newest first (by step, not by name)."""
    folder = Path(folder)
    found = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else []:
        step = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if step.isdigit() and path.is_dir():
            found.append((int(step), path))
    return sorted(found, reverse=True)


def newest_verified_checkpoint(folder: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that passes `checkpoint_problem`, and each newer one skipped with its reason."""
    skipped = []
    for _, path in numbered_checkpoints(folder):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


class CheckpointMarkerCallback(TrainerCallback):
    """Write the marker once Trainer has saved a checkpoint (its `on_save` runs after every file is written)."""

    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()  # every rank's files (its RNG state, FSDP shards) are on disk
        if args.should_save:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                write_checkpoint_marker(folder, state.global_step)
                logger.debug("verified checkpoint {}", folder)
